"""Hyena token mixers: kernel parity (pallas vs jnp.fft), logical axes, and a ViT that trains with them."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vision_models import models
from vision_models.errors import ConfigError
from vision_models.models import hyena

FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def loss_and_grads(module, variables, x):
  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run(variables, x):
    return jax.value_and_grad(lambda v, x: jnp.sum(jnp.sin(module.apply(v, x))), argnums=(0, 1))(variables, x)
  return run(variables, x)


def init(module, x):
  return nn.unbox(jax.jit(module.init, compiler_options=FAST_COMPILE)(jax.random.key(1), x))


def assert_trees_close(a, b, tol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=0, atol=tol * max(np.abs(y).max(), 1e-6))


@pytest.mark.parametrize('cls,length', [(hyena.HyenaMixer, 19), (hyena.HyenaMixer2D, 17)])
def test_pallas_matches_xla(cls, length):
  """The same mixer with the fused Monarch kernel and with jnp.fft: output, parameter and input gradients."""
  x = jax.random.normal(jax.random.key(0), (2, length, 16))
  variables = init(cls(), x)
  got = loss_and_grads(cls(impl='pallas'), variables, x)
  want = loss_and_grads(cls(impl='xla'), variables, x)
  assert_trees_close(got, want)
  assert np.abs(got[1][0]['params']['filter']['out_kernel']).max() > 1e-3  # The long convolution matters.


def test_causal_mixer_ignores_the_future():
  x = jax.random.normal(jax.random.key(0), (1, 12, 8))
  module = hyena.HyenaMixer(causal=True)
  variables = init(module, x)
  both = jax.jit(jax.vmap(module.apply, in_axes=(None, 0)), compiler_options=FAST_COMPILE)
  y, y2 = both(variables, jnp.stack([x, x.at[:, 7:].set(0.0)]))
  np.testing.assert_allclose(y[:, :7], y2[:, :7], atol=1e-5)
  assert not np.allclose(y[:, 7:], y2[:, 7:], atol=1e-3)


@pytest.mark.parametrize('cls', [hyena.HyenaMixer, hyena.HyenaMixer2D])
def test_every_param_has_logical_axes(cls):
  boxed = jax.eval_shape(lambda: cls().init(jax.random.key(0), jnp.zeros((1, 16, 8))))['params']
  leaves = jax.tree.leaves(boxed, is_leaf=lambda p: isinstance(p, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(p, nn.LogicallyPartitioned) and len(p.names) == p.value.ndim for p in leaves)
  names = {n for p in leaves for n in p.names}
  assert {'embed', 'mlp'} <= names


# With one block and a class token, the 2-D mixer's class token sees only the grid mean: pool the grid instead.
@pytest.mark.parametrize('mixer,pool', [('hyena', 'token'), ('hyena2d', 'gap')])
def test_vit_with_hyena_mixer_trains_one_step(mixer, pool):
  model = models.create('vit', num_classes=5, patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32,
                        mixer=mixer, pool=pool)
  images = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  labels = jnp.array([1, 3])
  params = init(model, images)['params']
  assert 'mixer' in params['blocks_0'] and 'attn' not in params['blocks_0']
  params['head']['kernel'] = 0.1 * jax.random.normal(jax.random.key(2), params['head']['kernel'].shape)
  tx = optax.adamw(1e-2)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def step(params, opt_state):
    def loss_fn(p):
      logits = model.apply({'params': p}, images, train=True, rngs={'dropout': jax.random.key(3)})
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, grads

  params, opt_state, loss, grads = step(params, tx.init(params))
  assert np.isfinite(loss) and all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert np.abs(grads['blocks_0']['mixer']['filter']['out_kernel']).max() > 0
  assert step(params, opt_state)[2] < loss


def test_bad_config_raises_config_error():
  with pytest.raises(ConfigError, match='unknown token mixer'):
    jax.eval_shape(models.create('vit', patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32, mixer='mamba').init,
                   jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  with pytest.raises(ConfigError, match='not a square grid'):
    jax.eval_shape(hyena.HyenaMixer2D().init, jax.random.key(0), jnp.zeros((1, 7, 8)))
  with pytest.raises(ConfigError, match='unknown hyena impl'):
    jax.eval_shape(hyena.HyenaMixer(impl='fast').init, jax.random.key(0), jnp.zeros((1, 7, 8)))
