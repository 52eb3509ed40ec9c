"""Shared fixtures. Tests run on the CPU; multi-device tests set XLA_FLAGS in a subprocess or via the 8-device
session below (conftest sets it before JAX is imported)."""
import os
import tempfile

try:  # torch (and triton, which diffusers pulls in) must load before TensorFlow: the other order can segfault.
  import torch  # noqa: F401
  import triton  # noqa: F401
except ImportError:
  pass

# 8 CPU devices for every test process: sharding tests need them, single-device code is unaffected.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Many tests (and the CLI subprocesses they start) compile the same tiny models: XLA's persistent cache lets every
# compilation after the first load from disk, across tests, xdist workers and processes.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), f'vision_models_xla_cache_{os.getuid()}'))

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
  """A TFDS data dir holding the digits dataset, written once per test process."""
  from vision_models.data import digits
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  digits.prepare(data_dir)
  return data_dir


@pytest.fixture
def tiny_config(digits_dir):
  """The quickstart config shrunk to a few seconds of training on the digits in `digits_dir`."""
  from configs import quickstart
  c = quickstart.get_config()
  c.data.data_dir = digits_dir
  c.data.shuffle_buffer = 500
  c.model.update(width=64, depth=1, num_heads=2, mlp_dim=128, drop_path=0.0)
  c.batch_size = 64
  c.total_steps = 30
  c.optimizer.update(warmup_steps=5, learning_rate=4e-3)
  c.log_every = 5
  c.eval_every = 15
  c.checkpoint_every = 15
  return c
