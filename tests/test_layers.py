"""Shared layers against the PyTorch functions timm's models use."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vision_models.models import layer_norm, layers


def test_gelu_is_torchs_exact_gelu_and_flaxs():
  x = np.linspace(-12, 12, 4001, dtype=np.float32)
  # Below -4, ½ + ½·erf(x/√2) is a difference of numbers near ½: a few 1e-7 absolute error (values near 1e-5).
  tol = dict(rtol=1e-6, atol=1e-6)
  ours = layers.gelu(jnp.asarray(x))
  chex.assert_trees_all_close(ours, torch.nn.functional.gelu(torch.from_numpy(x)).numpy(), **tol)
  chex.assert_trees_all_close(ours, nn.gelu(x, approximate=False), **tol)
  slope = jax.vmap(jax.grad(layers.gelu))(jnp.asarray(x))
  torch_x = torch.from_numpy(x).requires_grad_()
  torch.nn.functional.gelu(torch_x).sum().backward()
  chex.assert_trees_all_close(slope, torch_x.grad.numpy(), **tol)
  chex.assert_trees_all_close(slope, jax.vmap(jax.grad(lambda x: nn.gelu(x, approximate=False)))(x), **tol)


@pytest.mark.parametrize('backend', ['cpu', 'gpu'])
def test_gelu_tanh_is_torchs_tanh_gelu(backend, monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  x = np.linspace(-12, 12, 4001, dtype=np.float32)
  ours = layers.gelu_tanh(jnp.asarray(x))
  torch_x = torch.from_numpy(x).requires_grad_()
  reference = torch.nn.functional.gelu(torch_x, approximate='tanh')
  chex.assert_trees_all_close(ours, reference.detach().numpy(), rtol=1e-6, atol=1e-6)
  reference.sum().backward()
  slope = jax.vmap(jax.grad(layers.gelu_tanh))(jnp.asarray(x))
  # Against the closed form in float64: off the CPU our own backward pass is within 3e-7, torch's within 1e-6 and
  # float32 autodiff of ½x(1 + tanh u) (on the CPU) within 3.5e-6, where 1 + tanh u cancels (x < -4).
  z = x.astype(np.float64)
  t = np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3))
  exact = 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * z * z)
  chex.assert_trees_all_close(slope, exact.astype(np.float32), rtol=0, atol=3e-7 if backend == 'gpu' else 4e-6)
  chex.assert_trees_all_close(slope, torch_x.grad.numpy(), rtol=0, atol=1.5e-6 if backend == 'gpu' else 5e-6)
  half = jax.vmap(jax.grad(layers.gelu_tanh))(jnp.asarray(x, jnp.bfloat16))
  assert half.dtype == jnp.bfloat16
  chex.assert_trees_all_close(half.astype(jnp.float32), slope.astype(jnp.bfloat16).astype(jnp.float32),
                              rtol=1e-2, atol=1e-2)


def test_gelu_tanh_keeps_only_its_input_for_the_backward_pass_off_the_cpu(monkeypatch):
  # Autodiff also keeps the tanh, and with that second user XLA:GPU no longer fuses the activation into the product
  # before it.
  x = jnp.linspace(-3, 3, 64)
  _, residuals = jax.vjp(layers.gelu_tanh, x)
  assert len([leaf for leaf in jax.tree.leaves(residuals) if getattr(leaf, 'shape', ()) == x.shape]) > 1
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  _, residuals = jax.vjp(layers.gelu_tanh, x)
  saved = [leaf for leaf in jax.tree.leaves(residuals) if getattr(leaf, 'shape', ()) == x.shape]
  assert len(saved) == 1
  chex.assert_trees_all_equal(saved[0], x)


def test_layer_norm_matches_torch_and_flax_values_and_gradients():
  rng = np.random.default_rng(0)
  # An offset mean: a one-pass variance would lose digits.
  x = (rng.normal(size=(3, 5, 7, 96)) * 4 + 2).astype(np.float32)
  scale, bias, g = rng.normal(size=96).astype(np.float32), rng.normal(size=96).astype(np.float32), rng.normal(
      size=x.shape).astype(np.float32)
  params = {'params': {'scale': scale, 'bias': bias}}
  module = layers.layer_norm(1e-5)
  assert jax.tree.structure(nn.unbox(module.init(jax.random.key(0), x))) == jax.tree.structure(params)

  def loss(params, x, module=module):
    return jnp.vdot(module.apply(params, x), g)

  tensors = [torch.from_numpy(a).requires_grad_() for a in (x, scale, bias)]
  out = torch.nn.functional.layer_norm(tensors[0], (96,), tensors[1], tensors[2], 1e-5)
  (out * torch.from_numpy(g)).sum().backward()
  tol = dict(rtol=2e-5, atol=2e-5)
  chex.assert_trees_all_close(module.apply(params, x), out.detach().numpy(), **tol)
  grads = jax.grad(loss, argnums=(0, 1))(params, x)
  chex.assert_trees_all_close(grads, ({'params': {'scale': tensors[1].grad.numpy(), 'bias': tensors[2].grad.numpy()}},
                                      tensors[0].grad.numpy()), **tol)
  chex.assert_trees_all_close(grads, jax.grad(loss, argnums=(0, 1))(params, x, nn.LayerNorm(1e-5)), **tol)


def test_layer_norm_is_ours_on_the_cpu_and_flaxs_elsewhere(monkeypatch):
  # Ours has the faster backward on XLA:CPU; on an H100 it made ViT-B/16's step 7.4 ms slower than Flax's.
  x = jnp.ones((2, 8))
  ours = layers.layer_norm(name='norm')
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  flaxs = layers.layer_norm(name='norm')
  assert type(ours) is layer_norm.LayerNorm and type(flaxs) is nn.LayerNorm
  chex.assert_trees_all_equal_shapes_and_dtypes(nn.unbox(ours.init(jax.random.key(0), x)),
                                                nn.unbox(flaxs.init(jax.random.key(0), x)))
  assert nn.get_partition_spec(flaxs.init(jax.random.key(0), x))['params']['scale'] == jax.sharding.PartitionSpec(
      'embed')


def test_layer_norm_dtypes_and_no_bias():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 32)), jnp.bfloat16)
  params = {'params': {'scale': jnp.ones(32), 'bias': jnp.zeros(32)}}
  assert layers.layer_norm(dtype=jnp.bfloat16).apply(params, x).dtype == jnp.bfloat16
  assert layers.layer_norm().apply(params, x).dtype == jnp.float32  # promoted with the parameters, as nn.LayerNorm
  dx = jax.grad(lambda x: layers.layer_norm(dtype=jnp.bfloat16).apply(params, x).astype(jnp.float32).sum())(x)
  assert dx.dtype == jnp.bfloat16
  no_bias = layers.layer_norm(use_bias=False)
  assert set(nn.unbox(no_bias.init(jax.random.key(0), x))['params']) == {'scale'}
  chex.assert_trees_all_close(no_bias.apply({'params': {'scale': jnp.ones(32)}}, x),
                              nn.LayerNorm(use_bias=False).apply({'params': {'scale': jnp.ones(32)}}, x), atol=1e-5)


class _DenseMlp(nn.Module):
  """`layers.Mlp` as two `layers.dense` modules: the parameters it must keep, the values it must give."""
  hidden: int

  @nn.compact
  def __call__(self, x):
    h = layers.gelu(layers.dense(self.hidden, name='fc1')(x))
    return layers.dense(x.shape[-1], ('mlp', 'embed'), name='fc2')(h)


def test_mlp_in_hidden_pieces_keeps_dense_parameters_values_and_gradients():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 10, 48)), jnp.float32)
  hidden = 1600  # three pieces on the CPU (cpu_dot.hidden_chunks)
  ours, plain = layers.Mlp(hidden), _DenseMlp(hidden)
  params = ours.init(jax.random.key(3), x)
  chex.assert_trees_all_equal(params, plain.init(jax.random.key(3), x))  # names, logical axes and initial values
  loss = lambda module: lambda p: jnp.sin(module.apply(p, x)).sum()  # noqa: E731
  chex.assert_trees_all_close(ours.apply(params, x), plain.apply(params, x), rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(jax.grad(loss(ours))(params), jax.grad(loss(plain))(params), rtol=1e-4, atol=1e-5)
  products = str(jax.make_jaxpr(ours.apply)(params, x)).count('dot_general')
  assert products == (6 if jax.default_backend() == 'cpu' else 2)


def test_mlp_dropout_draws_a_mask_per_piece():
  x = jnp.ones((2, 10, 48))
  mlp = layers.Mlp(1600, dropout=0.5)
  params = mlp.init(jax.random.key(0), x)
  chex.assert_trees_all_equal(mlp.apply(params, x), mlp.apply(params, x, train=False))  # none at evaluation
  _, state = mlp.apply(params, x, train=True, rngs={'dropout': jax.random.key(1)}, capture_intermediates=True)
  *pieces, _ = state['intermediates']['Dropout_0']['__call__']  # the hidden pieces, then the output
  dropped = [np.asarray(piece == 0)[..., :533] for piece in pieces]
  assert len(pieces) == (3 if jax.default_backend() == 'cpu' else 1)
  for mask in dropped:
    assert 0.45 < mask.mean() < 0.55
  for a, b in zip(dropped, dropped[1:]):
    assert 0.4 < (a == b).mean() < 0.6  # independent masks agree on half the units, a repeated one on all
