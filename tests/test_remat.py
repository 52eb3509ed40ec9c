"""Rematerialisation gives the same gradients and less temporary memory."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_models import models


def loss_and_grads(model, variables, images):
  def loss(params):
    return model.apply({'params': params}, images, train=False).sum()
  return jax.jit(jax.value_and_grad(loss))(variables['params'])


@pytest.mark.parametrize('policy', [True, 'dots_with_no_batch_dims_saveable'])
def test_remat_gives_identical_gradients(policy):
  kwargs = dict(num_classes=5, patch_size=4, width=32, depth=3, num_heads=2, mlp_dim=64)
  plain, remat = models.create('vit', **kwargs), models.create('vit', remat=policy, **kwargs)
  images = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  variables = nn.unbox(plain.init(jax.random.key(1), images))
  variables['params']['head']['kernel'] = jax.random.normal(jax.random.key(2), (32, 5))
  expected, got = loss_and_grads(plain, variables, images), loss_and_grads(remat, variables, images)
  # Equal up to float32 rounding (some gradients are analytically zero, e.g. the key bias under softmax's shift
  # invariance): the absolute tolerance is relative to the largest gradient.
  scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(expected))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale), got, expected)


def test_remat_needs_less_temporary_memory():
  kwargs = dict(num_classes=5, patch_size=4, width=32, depth=4, num_heads=2, mlp_dim=128)
  images = jnp.zeros((8, 32, 32, 3))
  temps = {}
  for policy in (False, True, 'dots_with_no_batch_dims_saveable'):
    model = models.create('vit', remat=policy, **kwargs)
    params = nn.unbox(model.init(jax.random.key(0), images))['params']
    grad = jax.jit(jax.grad(lambda p: model.apply({'params': p}, images, train=False).sum()))
    temps[policy] = grad.lower(params).compile().memory_analysis().temp_size_in_bytes
  # Each block keeps only its input (and, under the policy, its matmul outputs): 7.8 → 2.7 and 4.0 MB here.
  assert temps[True] < temps['dots_with_no_batch_dims_saveable'] < 0.6 * temps[False]


def test_unknown_remat_policy():
  model = models.create('vit', remat='keep_everything', patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=16)
  with pytest.raises(ValueError, match='unknown remat policy'):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
