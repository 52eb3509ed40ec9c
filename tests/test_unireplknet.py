"""UniRepLKNet: parameter counts equal the official model's (training and deploy form); the structural
re-parameterisation keeps the eval-mode outputs; logits equal the official model's on a stored fixture (official
`unireplknet.py`, random weights and BN statistics), from the training and the deploy form."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_models import convert, models
from vision_models.errors import ConfigError
from vision_models.models import unireplknet

OFFICIAL_COUNTS = {  # name: (training form, deploy form), sum(p.numel()) of the official unireplknet.py models
    'unireplknet_a': (4_649_060, 4_437_300),
    'unireplknet_f': (6_489_328, 6_235_216),
    'unireplknet_p': (11_080_520, 10_741_704),
    'unireplknet_n': (18_818_880, 18_318_560),
    'unireplknet_t': (31_693_420, 31_037_980),
    'unireplknet_s': (56_456_704, 55_645_984),
    'unireplknet_b': (99_089_416, 98_008_456),
    'unireplknet_l': (220_076_056, 218_454_616),
    'unireplknet_xl': (388_690_984, 386_529_064),
}
# unireplknet_a's depths and kernel sizes at widths (8, 16, 32, 64), 10 classes, 64 px; made by
# fixtures/unireplknet_a_tiny.py from the official unireplknet.py.
FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'unireplknet_a_tiny.npz')


FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def run(fn, *args):
  return jax.jit(fn, compiler_options=FAST_COMPILE)(*args)


def count(module):
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  return models.param_count(nn.unbox(variables['params']))


@pytest.mark.parametrize('name', sorted(OFFICIAL_COUNTS))
def test_parameter_counts_equal_official(name):
  module = models.create(name)
  assert count(module) == OFFICIAL_COUNTS[name][0]
  if name in ('unireplknet_a', 'unireplknet_n', 'unireplknet_t', 'unireplknet_s'):  # One per kernel-size table.
    assert count(module.clone(deploy=True)) == OFFICIAL_COUNTS[name][1]


def randomise(variables, seed=0):
  """Random parameters (layer scales near 0.5) and BN statistics, so every branch and BN shows in the outputs."""
  leaves, tree = jax.tree.flatten_with_path(nn.unbox(variables))
  rng = np.random.default_rng(seed)
  out = []
  for path, leaf in leaves:
    key = jax.tree_util.keystr(path)
    if key.endswith("['var']"):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    elif key.endswith("['gamma']") and "['ls']" in key:
      value = 0.5 + 0.1 * rng.standard_normal(leaf.shape)
    else:
      value = (0.05 if leaf.ndim > 1 else 0.2) * rng.standard_normal(leaf.shape)
      if key.endswith("['scale']"):
        value += 1.0
    out.append(jnp.asarray(value, leaf.dtype))
  return jax.tree.unflatten(tree, out)


def test_reparameterized_equals_training_form():
  # Every dilated-branch set (kernels 7 … 17) and the plain 3×3/5×5 blocks, at widths that keep it fast.
  module = models.create('unireplknet', depths=(2, 1, 3, 1), dims=(8, 16, 16, 32), num_classes=7,
                         kernel_sizes=((3, 5), (7,), (9, 11, 13), (15,)))
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  variables = randomise(jax.eval_shape(module.init, jax.random.key(0), x))
  deploy, deploy_variables = unireplknet.reparameterize(module, variables)
  assert 'batch_stats' not in deploy_variables and deploy.deploy
  expected = run(lambda v: module.apply(v, x), variables)
  got = run(lambda v: deploy.apply(v, x), deploy_variables)
  assert float(jnp.abs(expected).max()) > 0.1  # The comparison is not between two near-zero outputs.
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)


def test_kernel_size_17_block_reparameterizes():
  module = unireplknet.Block(17)
  x = jax.random.normal(jax.random.key(1), (1, 24, 24, 8))
  variables = randomise(jax.eval_shape(module.init, jax.random.key(0), x))
  params, stats = variables['params'], variables['batch_stats']
  wrapped = {'params': {'stages_0_0': params}, 'batch_stats': {'stages_0_0': stats}}
  _, deploy_variables = unireplknet.reparameterize(models.create('unireplknet'), wrapped)
  deploy = unireplknet.Block(17, deploy=True)
  got = run(lambda v: deploy.apply({'params': v['params']['stages_0_0']}, x), deploy_variables)
  np.testing.assert_allclose(np.asarray(got), np.asarray(run(lambda v: module.apply(v, x), variables)), atol=1e-5)


def test_matches_official_fixture():
  data = np.load(FIXTURE)
  state = {k[3:]: data[k] for k in data.files if k.startswith('sd/')}
  module, variables = convert.from_unireplknet('unireplknet_a', state)
  assert tuple(module.dims) == (8, 16, 32, 64) and module.kernel_sizes is None
  got = run(lambda v, x: module.apply(v, x), variables, data['input'])
  np.testing.assert_allclose(np.asarray(got), data['output'], atol=1e-4)
  deploy, deploy_variables = unireplknet.reparameterize(module, variables)
  got = run(lambda v, x: deploy.apply(v, x), deploy_variables, data['input'])
  np.testing.assert_allclose(np.asarray(got), data['output_deploy'], atol=1e-4)


def test_bad_kernel_sizes_name_the_field():
  with pytest.raises(ConfigError, match='kernel_sizes'):
    count(models.create('unireplknet', depths=(1, 1, 1, 1)))
  with pytest.raises(ConfigError, match='kernel_sizes'):
    count(models.create('unireplknet', depths=(1, 1, 1, 1), kernel_sizes=((3,), (4,), (3,), (3,))))


def test_imagenet_config_builds_its_model():
  import importlib.util
  from vision_models.data import preprocess
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'unireplknet_t.py')
  spec = importlib.util.spec_from_file_location('unireplknet_t', path)
  config = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(config)
  config = config.get_config()
  model = models.create(config.model.name, **{k: v for k, v in config.model.items() if k != 'name'})
  assert tuple(model.depths) == (3, 3, 18, 3) and model.drop_path == 0.2
  preprocess.parse(config.data.pp_train)
  preprocess.parse(config.data.pp_eval)
