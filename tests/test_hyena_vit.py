"""Hyena ViT (ViT with the 2-D Hyena token mixer, GAP): parameter counts in closed form, a forward/backward pass,
and the digits quickstart config."""
import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_models import models
from vision_models.data import preprocess
from vision_models.models import vit

FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def hyena2d_params(d: int, order: int = 2, width: int = 64, emb_dim: int = 33, short: int = 3) -> int:
  """HyenaMixer2D: in-projection to order+1 branches, 3×3 short convs, the implicit-filter MLP (2-D positional
  features in, three sin layers with frequencies), its per-channel output, the D skip, the out-projection."""
  branches = order + 1
  in_proj = d * branches * d + branches * d
  short_conv = short * short * branches * d
  filter_mlp = (2 * emb_dim * width + width + width) + 2 * (width * width + width + width) + width * (order - 1) * d
  return in_proj + short_conv + filter_mlp + (order - 1) * d + d * d + d


def hyena_vit_params(d: int, depth: int, mlp: int, image: int = 224, patch: int = 16, classes: int = 1000) -> int:
  block = 2 * (2 * d) + hyena2d_params(d) + (d * mlp + mlp + mlp * d + d)
  stem = patch * patch * 3 * d + d + (image // patch) ** 2 * d  # patch embedding and the learned position embedding
  return stem + depth * block + 2 * d + d * classes + classes  # fc_norm after the average pool, head


@pytest.mark.parametrize('size', ['ti', 's', 'b'])
def test_parameter_counts_closed_form(size):
  width, depth, _, mlp = vit.VARIANTS[size]
  module = models.create(f'hyena_vit_{size}16')
  assert (module.mixer, module.pool, module.patch_size) == ('hyena2d', 'gap', 16)
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  assert models.param_count(nn.unbox(variables['params'])) == hyena_vit_params(width, depth, mlp)


def test_forward_backward():
  module = models.create('hyena_vit_ti16', depth=2, num_classes=10, drop_path=0.1)
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  labels = jnp.array([3, 7])
  variables = nn.unbox(jax.jit(module.init, compiler_options=FAST_COMPILE)(jax.random.key(1), x))
  head = variables['params']['head']  # Zero-initialised, as timm's: random here so gradients reach the blocks.
  head['kernel'] = jax.random.normal(jax.random.key(3), head['kernel'].shape) * 0.1

  def loss(params):
    logits = module.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.key(2)})
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), labels]), logits

  (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True), compiler_options=FAST_COMPILE)(
      variables['params'])
  assert logits.shape == (2, 10) and np.isfinite(float(value))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  mixer = grads['blocks_0']['mixer']
  for name in ('in_kernel', 'short_kernel', 'filter_bias', 'out_kernel'):
    assert float(jnp.abs(mixer[name]).max()) > 0, name
  assert float(jnp.abs(mixer['filter']['out_kernel']).max()) > 0


def test_digits_config_builds_its_model():
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'hyena_vit_digits.py')
  spec = importlib.util.spec_from_file_location('hyena_vit_digits', path)
  config = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(config)
  config = config.get_config()
  model = models.create(config.model.name, num_classes=10, **{k: v for k, v in config.model.items() if k != 'name'})
  assert model.mixer == 'hyena2d' and model.pool == 'gap'
  preprocess.parse(config.data.pp_train)
  preprocess.parse(config.data.pp_eval)
  x = jnp.zeros((2, config.data.image_size, config.data.image_size, config.data.channels))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert jax.eval_shape(model.apply, variables, x).shape == (2, 10)
