"""Two local processes with 4 CPU devices each train as one 8-device job (jax.distributed, CPU collectives),
checkpoint, resume, and agree; each host reads its own share of the data."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from vision_models import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.xdist_group('training')


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def launch(workdir, digits_dir, total_steps):
  port = free_port()
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  args = ['--config=configs/quickstart.py', f'--workdir={workdir}', f'--config.data.data_dir={digits_dir}',
          f'--config.total_steps={total_steps}', '--config.log_every=2', '--config.eval_every=100',
          '--config.checkpoint_every=3', '--config.model.depth=1', '--config.batch_size=32',
          f'--coordinator_address=localhost:{port}', '--num_processes=2']
  procs = [subprocess.Popen([sys.executable, 'train.py', *args, f'--process_id={i}'], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return [out for out, _ in outs]


def final_line(stdout):
  return [l for l in stdout.splitlines() if l.startswith('Final eval')][-1]


def test_two_processes_train_checkpoint_resume_and_agree(tmp_path, digits_dir):
  first = launch(tmp_path, digits_dir, total_steps=6)
  assert final_line(first[0]) == final_line(first[1])
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '6']
  resumed = launch(tmp_path, digits_dir, total_steps=8)
  assert 'Resuming from step 6' in resumed[0]
  assert final_line(resumed[0]) == final_line(resumed[1])
  assert '8' in os.listdir(tmp_path / 'checkpoints')


def test_each_host_reads_its_own_share(digits_dir, monkeypatch):
  pp = 'decode(1)|keep("image", "label")'
  seen = []
  for index in range(2):
    monkeypatch.setattr(data.pipeline.jax, 'process_index', lambda i=index: i)
    monkeypatch.setattr(data.pipeline.jax, 'process_count', lambda: 2)
    batches = list(data.eval_batches('sklearn_digits', 'test', digits_dir, pp, 60))
    assert len(batches) == 3  # 180 examples each.
    seen.append(np.concatenate([b['image'][b['mask'] > 0].reshape(-1, 64) for b in batches]))
  assert len(seen[0]) == len(seen[1]) == 180
  rows = {tuple(r) for r in seen[0]}
  assert sum(tuple(r) in rows for r in seen[1]) < 5  # Disjoint halves (a few digits are pixel-identical).
