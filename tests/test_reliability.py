"""Runs survive SIGKILL (exact resume), SIGTERM (checkpoint and exit), corrupted checkpoints and non-finite
numbers; bad input is a clean error."""
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vision_models.errors import ConfigError, TrainingError
from vision_models.training import metrics as metrics_lib, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.xdist_group('training')


def cli_args(workdir, digits_dir, total_steps):
  return [sys.executable, 'train.py', '--config=configs/quickstart.py', f'--workdir={workdir}',
          f'--config.data.data_dir={digits_dir}', f'--config.total_steps={total_steps}', '--config.log_every=1',
          '--config.eval_every=1000', '--config.checkpoint_every=3', '--config.model.depth=1',
          '--config.model.width=32', '--config.model.mlp_dim=64', '--config.batch_size=32']


def diffusion_args(workdir, digits_dir, total_steps):
  return [sys.executable, 'train.py', '--config=configs/dit_digits.py', f'--workdir={workdir}',
          f'--config.data.data_dir={digits_dir}', f'--config.total_steps={total_steps}', '--config.log_every=1',
          '--config.checkpoint_every=3', '--config.model.depth=1', '--config.model.hidden_size=16',
          '--config.model.num_heads=2', '--config.model.patch_size=4', '--config.batch_size=16',
          '--config.optimizer.schedule=constant', '--config.optimizer.warmup_steps=0']  # total_steps changes nothing.


def start(workdir, digits_dir, total_steps, args=cli_args):
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  return subprocess.Popen(args(workdir, digits_dir, total_steps), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def wait_for_step(workdir, step, proc, timeout=300):
  path = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    if os.path.exists(path) and any(r['step'] >= step for r in metrics_lib.read(workdir)):
      return
    time.sleep(0.05)
  raise TimeoutError(f'step {step} not reached')


def finish(proc):
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return out


def saved_state(workdir, step):
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'), item_handlers=ocp.StandardCheckpointHandler())
  return manager.restore(step)


def without_perf(records):
  return [{k: v for k, v in r.items() if not k.startswith('perf/')} for r in records]


def test_sigkill_at_a_random_step_resumes_exactly(tmp_path, digits_dir):
  total = 12
  finish(start(tmp_path / 'straight', digits_dir, total))
  kill_at = random.Random().randint(2, total - 2)
  proc = start(tmp_path / 'killed', digits_dir, total)
  wait_for_step(tmp_path / 'killed', kill_at, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  survived = [d for d in os.listdir(tmp_path / 'killed' / 'checkpoints') if d.isdigit()]  # Complete ones only.
  out = finish(start(tmp_path / 'killed', digits_dir, total))
  assert ('Resuming from step' in out) == bool(survived), (kill_at, survived)
  expected, got = saved_state(tmp_path / 'straight', total), saved_state(tmp_path / 'killed', total)
  jax.tree.map(np.testing.assert_array_equal, got, expected)  # Bitwise on the CPU.
  assert without_perf(metrics_lib.read(tmp_path / 'killed')) == without_perf(metrics_lib.read(tmp_path / 'straight')), kill_at


def test_sigterm_saves_waits_and_exits_cleanly_then_resumes(tmp_path, digits_dir):
  proc = start(tmp_path, digits_dir, 100_000)
  wait_for_step(tmp_path, 4, proc)
  proc.send_signal(signal.SIGTERM)
  out = finish(proc)
  saved = int(out.split('SIGTERM: saved step ')[1].split(';')[0])
  assert saved >= 4 and str(saved) in os.listdir(tmp_path / 'checkpoints')
  assert not [d for d in os.listdir(tmp_path / 'checkpoints') if 'tmp' in d]
  out = finish(start(tmp_path, digits_dir, saved + 2))
  assert f'Resuming from step {saved}' in out


@pytest.mark.slow
def test_diffusion_sigterm_saves_and_resumes_exactly(tmp_path, digits_dir):
  """The diffusion task runs the same loop: SIGTERM checkpoints and exits, the rerun resumes, and the result equals an
  uninterrupted run's bit for bit."""
  proc = start(tmp_path / 'stopped', digits_dir, 100_000, diffusion_args)
  wait_for_step(tmp_path / 'stopped', 4, proc)
  proc.send_signal(signal.SIGTERM)
  saved = int(finish(proc).split('SIGTERM: saved step ')[1].split(';')[0])
  assert saved >= 4 and str(saved) in os.listdir(tmp_path / 'stopped' / 'checkpoints')
  total = saved + 2
  assert f'Resuming from step {saved}' in finish(start(tmp_path / 'stopped', digits_dir, total, diffusion_args))
  finish(start(tmp_path / 'straight', digits_dir, total, diffusion_args))
  expected, got = saved_state(tmp_path / 'straight', total), saved_state(tmp_path / 'stopped', total)
  assert set(got) == {'step', 'params', 'opt_state', 'model_state', 'ema_params'}
  jax.tree.map(np.testing.assert_array_equal, got, expected)
  records = [without_perf(metrics_lib.read(tmp_path / d)) for d in ('stopped', 'straight')]
  assert records[0][-2:] == records[1][-2:]


def corrupt(step_dir):
  for root, _, files in os.walk(step_dir):
    for name in files:
      with open(os.path.join(root, name), 'r+b') as f:
        f.truncate(max(os.path.getsize(os.path.join(root, name)) // 3, 1))
        f.seek(0)
        f.write(b'\x00garbage')


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tiny_config, tmp_path, capfd):
  tiny_config.total_steps, tiny_config.checkpoint_every, tiny_config.keep_checkpoints = 6, 3, 2
  tiny_config.eval_every = 6
  trainer.train(tiny_config, str(tmp_path))
  corrupt(tmp_path / 'checkpoints' / '6')
  assert trainer.evaluate(tiny_config, str(tmp_path))['step'] == 3
  assert 'cannot be read' in capfd.readouterr().err
  assert not os.path.exists(tmp_path / 'corrupt')  # Readers move nothing.
  tiny_config.total_steps = 9  # Resumes from 3; keeping 2 never deleted the good one.
  trainer.train(tiny_config, str(tmp_path))
  assert os.listdir(tmp_path / 'corrupt') == ['6']
  assert sorted(os.listdir(tmp_path / 'checkpoints'), key=int) == ['6', '9']
  # The records the corrupted run wrote after step 3 were replaced by the resumed run's (logged every 5 and at the end).
  assert [r['step'] for r in metrics_lib.read(str(tmp_path)) if 'train/loss' in r] == [5, 9]


def test_no_readable_checkpoint_stops_and_moves_nothing(tiny_config, tmp_path):
  tiny_config.total_steps, tiny_config.checkpoint_every, tiny_config.eval_every = 3, 3, 3
  trainer.train(tiny_config, str(tmp_path))
  corrupt(tmp_path / 'checkpoints' / '3')
  tiny_config.total_steps = 6
  with pytest.raises(TrainingError, match=r'none of the 1 checkpoints in .* reads back .*nothing was moved'):
    trainer.train(tiny_config, str(tmp_path))
  assert os.listdir(tmp_path / 'checkpoints') == ['3'] and not os.path.exists(tmp_path / 'corrupt')
  assert max(r['step'] for r in metrics_lib.read(str(tmp_path))) == 3  # The history stays.


def test_resume_with_another_optimizer_state_is_a_config_error(tiny_config, tmp_path):
  """A checkpoint with entries the config lacks (here the EMA) is not corruption: nothing moves, the run stops."""
  tiny_config.total_steps, tiny_config.checkpoint_every, tiny_config.eval_every = 3, 3, 3
  tiny_config.optimizer.ema_decay = 0.99
  trainer.train(tiny_config, str(tmp_path))
  tiny_config.optimizer.ema_decay = 0.0
  tiny_config.total_steps = 6
  with pytest.raises(ConfigError, match=r'checkpoint .*/3 has .* that this config does not'):
    trainer.train(tiny_config, str(tmp_path))
  with pytest.raises(ConfigError, match=r'that this config does not'):
    trainer.evaluate(tiny_config, str(tmp_path))
  assert os.listdir(tmp_path / 'checkpoints') == ['3'] and not os.path.exists(tmp_path / 'corrupt')


def test_restore_onto_another_mesh_and_shape_mismatch(tiny_config, tmp_path):
  tiny_config.total_steps, tiny_config.checkpoint_every, tiny_config.eval_every = 3, 3, 3
  first = trainer.train(tiny_config, str(tmp_path))
  tiny_config.mesh.update(data=2, fsdp=4)
  tiny_config.shard_min_size = 0
  assert trainer.evaluate(tiny_config, str(tmp_path))['eval/accuracy'] == pytest.approx(first['eval/accuracy'])
  tiny_config.model.width = 48
  with pytest.raises(ConfigError, match=r'checkpoint .*/3: params/.* has shape \(.*\) but the model wants'):
    trainer.evaluate(tiny_config, str(tmp_path))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path):
  tiny_config.optimizer.update(learning_rate=1e30, warmup_steps=0, schedule='constant', name='sgd')
  tiny_config.checkpoint_every = 1
  with pytest.raises(TrainingError, match=r'step \d+: train/(loss|grad_norm) is (nan|inf)'):
    trainer.train(tiny_config, str(tmp_path))
  latest = max(int(d) for d in os.listdir(tmp_path / 'checkpoints'))
  params = saved_state(tmp_path, latest)['params']
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_skip_nonfinite_drops_and_counts_bad_updates(tiny_config, tmp_path):
  tiny_config.optimizer.update(learning_rate=1e30, warmup_steps=0, schedule='constant', name='sgd')
  tiny_config.skip_nonfinite = True
  tiny_config.total_steps, tiny_config.eval_every, tiny_config.checkpoint_every = 10, 10, 10
  trainer.train(tiny_config, str(tmp_path))
  skipped = [r['train/skipped'] for r in metrics_lib.read(str(tmp_path)) if 'train/skipped' in r]
  assert skipped and max(skipped) == 1.0
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved_state(tmp_path, 10)['params']))
