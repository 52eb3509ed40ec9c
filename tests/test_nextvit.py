"""Next-ViT: parameter counts equal timm's; logits equal timm's (random weights and BN statistics, eval mode), also
from a state dict saved after timm's `reparameterize()` (BNs folded into q/k/v and fc1); training mode updates the
batch statistics."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parity import TOLERANCE, compare, randomise, relative_diff
from vision_models import convert, models

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

TIMM_COUNTS = {  # sum(p.numel() for p in timm.create_model(name).parameters()), timm 1.0.31
    'nextvit_small': 31_763_368,
    'nextvit_base': 44_818_856,
    'nextvit_large': 57_874_344,
}


@pytest.mark.parametrize('name', sorted(TIMM_COUNTS))
def test_parameter_counts_equal_timm(name):
  variables = jax.eval_shape(lambda: models.create(name).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  assert models.param_count(nn.unbox(variables['params'])) == TIMM_COUNTS[name]


def random_bn_stats(model):
  """Non-trivial running statistics in every BatchNorm, so eval-mode normalisation shows in the logits."""
  gen = torch.Generator().manual_seed(2)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
  return model


def test_nextvit_small_matches_timm():
  # 80 px: odd maps in the last stage (ceil-mode pooling) and token counts not divisible by sr² (dropped remainder).
  model = random_bn_stats(randomise(timm.create_model('nextvit_small', pretrained=False, num_classes=10)))
  module, diff = compare(model, 'nextvit_small.bd_in1k', 80)
  assert module.name == 'nextvit_small' and diff <= TOLERANCE


def test_reparameterized_state_dict_converts():
  model = random_bn_stats(randomise(timm.create_model('nextvit_small', pretrained=False, depths=(1, 1, 5, 1),
                                                      num_classes=10)))
  for m in model.modules():
    if hasattr(m, 'reparameterize'):
      m.reparameterize()
  assert not any(k.startswith('stages.1.blocks.0.norm1') for k in model.state_dict())
  images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    expected = model(images).numpy()
  module, variables = convert.from_timm('nextvit_small', model.state_dict())
  assert tuple(module.depths) == (1, 1, 5, 1)
  x = jnp.asarray(images.numpy().transpose(0, 2, 3, 1))
  got = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)
  assert relative_diff(got, expected) <= TOLERANCE

  # Training mode on the same variables: batch statistics in use and updated, stochastic depth on.
  train = module.clone(drop_path=0.1)
  logits, updates = jax.jit(lambda v, x: train.apply(v, x, train=True, mutable=['batch_stats'],
                                                     rngs={'dropout': jax.random.key(0)}))(variables, x[:, :32, :32])
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
  assert not np.allclose(variables['batch_stats']['norm']['mean'], updates['batch_stats']['norm']['mean'])


def test_imagenet_config_builds_its_model():
  import importlib.util
  import os
  from vision_models.data import preprocess
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'nextvit_s.py')
  spec = importlib.util.spec_from_file_location('nextvit_s', path)
  config = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(config)
  config = config.get_config()
  model = models.create(config.model.name, **{k: v for k, v in config.model.items() if k != 'name'})
  assert model.depths == (3, 4, 10, 3)
  preprocess.parse(config.data.pp_train)
  preprocess.parse(config.data.pp_eval)
