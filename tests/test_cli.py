"""train.py and eval.py as a user runs them: bad input exits with code 2 and one line, a run then an eval works."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.xdist_group('training')


def run(script, *args, env_extra=None):
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2', **(env_extra or {})}
  return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                        cwd=ROOT, env=env, timeout=600)


def assert_exits_2_with_one_line(tmp_path, config, args, message):
  proc = run('train.py', f'--config={config}', f'--workdir={tmp_path}', *args)
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.strip().splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and message in lines[0], proc.stderr
  assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('override,message', [
    ('--config.model.name=vit_nope', "unknown model 'vit_nope'"),
    ('--config.data.name=no_such_dataset_xyz', "unknown dataset 'no_such_dataset_xyz'"),
    ('--config.batch_size=3', 'batch_size=3 is not divisible by the data-parallel size 2'),
])
def test_bad_input_exits_2_with_one_line(tmp_path, digits_dir, override, message):
  assert_exits_2_with_one_line(tmp_path, 'configs/quickstart.py', [f'--config.data.data_dir={digits_dir}', override],
                               message)


@pytest.mark.parametrize('config,override,message', [
    ('configs/quickstart.py', '--config.optimizer.ema_decay=0.99', 'unknown config field --config.optimizer.ema_decay'),
    ('configs/no_such_config.py', '--config.batch_size=8', "No such file or directory: 'configs/no_such_config.py'"),
    ('configs/vit_s16.py:bogus', '--config.batch_size=8', 'takes no argument, "90ep", "150ep" or "300ep"'),
])
def test_bad_config_file_or_field_exits_2_with_one_line(tmp_path, config, override, message):
  assert_exits_2_with_one_line(tmp_path, config, [override], message)


def test_resolution_with_a_diffusion_config_exits_2(tmp_path, digits_dir):
  """eval.py --resolution evaluates classifiers; a diffusion config samples at its own size (not silently)."""
  proc = run('eval.py', '--config=configs/dit_digits.py', f'--workdir={tmp_path}',
             f'--config.data.data_dir={digits_dir}', '--resolution=16')
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith('error: --resolution=16 evaluates a classifier')
  assert 'Traceback' not in proc.stderr


def test_train_then_eval_from_the_command_line(tmp_path, digits_dir):
  common = ['--config=configs/quickstart.py', f'--workdir={tmp_path}', f'--config.data.data_dir={digits_dir}']
  small = ['--config.total_steps=10', '--config.log_every=5', '--config.eval_every=10',
           '--config.checkpoint_every=10', '--config.model.depth=1', '--config.batch_size=32']
  proc = run('train.py', *common, *small)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Final eval: accuracy' in proc.stdout and f'Checkpoints: {tmp_path}/checkpoints' in proc.stdout
  proc = run('eval.py', *common, '--config.model.depth=1', '--config.batch_size=32')
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / 'eval.json') as f:
    result = json.load(f)
  assert result['step'] == 10 and result['eval/examples'] == 360
  assert f'top-1 {result["eval/accuracy"]:.4f}' in proc.stdout
