"""Fuzzed config overrides: every value either builds or raises ConfigError before compiling, never a crash."""
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from vision_models import parallel
from vision_models.errors import ConfigError
from vision_models.training import setup as setup_lib

INTS = st.one_of(st.integers(-3, 0), st.integers(1, 70), st.sampled_from([2 ** 31, 7, 12, 96]))
OVERRIDES = st.fixed_dictionaries({}, optional={
    'batch_size': INTS,
    'total_steps': INTS,
    'log_every': INTS,
    'grad_accum_steps': INTS,
    'model.name': st.one_of(st.sampled_from(['vit', 'vit_ti16', 'vit_nope', '']), st.text(max_size=12)),
    'model.width': INTS,
    'model.depth': st.integers(-1, 3),
    'model.num_heads': INTS,
    'model.patch_size': INTS,
    'model.pool': st.sampled_from(['gap', 'token', 'max', '']),
    'model.posemb': st.sampled_from(['learn', 'sincos2d', 'rope']),
    'model.attn_impl': st.sampled_from(['xla', 'pallas', 'cudnn', 'auto', 'fast']),
    'model.dtype': st.sampled_from(['float32', 'bfloat16', 'float77']),
    'data.name': st.one_of(st.sampled_from(['sklearn_digits', 'imagenet2012', 'mnist/3.0.1']), st.text(max_size=12)),
    'data.image_size': INTS,
    'data.pp_train': st.sampled_from(['decode(1)|resize(16)', 'decode|warp(3)', 'resize(', 'keep()']),
    'data.on_corrupt': st.sampled_from(['skip', 'fail', 'ignore']),
    'mesh.data': st.sampled_from([-1, 0, 1, 2, 3, 8, 16]),
    'mesh.fsdp': st.sampled_from([-1, 1, 2, 4, 5]),
    'mesh.tensor': st.sampled_from([-1, 1, 2, 3]),
    'optimizer.name': st.sampled_from(['adamw', 'sgd', 'rmsprop']),
    'optimizer.schedule': st.sampled_from(['cosine', 'linear', 'constant', 'step']),
    'optimizer.learning_rate': st.floats(allow_nan=True, allow_infinity=True, width=32),
})


def apply(config, overrides):
  """Sets each override like `--config.a.b=v` would; ml_collections refuses a value of the wrong type."""
  for path, value in overrides.items():
    *parents, key = path.split('.')
    node = config
    for p in parents:
      node = node[p]
    try:
      node[key] = value
    except TypeError:
      return False
  return True


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=OVERRIDES)
def test_any_override_builds_or_is_a_config_error(tiny_config, tmp_path, overrides):
  config = tiny_config.copy_and_resolve_references()
  if not apply(config, overrides):
    return  # Rejected by the config's types, which the command line reports with exit code 2.
  try:
    s = setup_lib.build(config, str(tmp_path))
  except ConfigError as e:
    assert str(e) and '\n' not in str(e).strip()
    return
  assert s.mesh.devices.size == 8 and config.batch_size % parallel.data_parallel_size(s.mesh) == 0
  assert s.input_shape[0] % getattr(s.model, 'patch_size', 1) == 0


def test_wrong_type_override_exits_2_from_the_command_line(tmp_path):
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, 'train.py', '--config=configs/quickstart.py', f'--workdir={tmp_path}',
                         '--config.batch_size=big'], cwd=root, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.startswith('error:') and 'batch_size' in proc.stderr and 'Traceback' not in proc.stderr
