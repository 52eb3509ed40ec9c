"""Shared layers against the PyTorch functions timm's models use."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

from vision_models.models import layers


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


def test_layer_norm_matches_torch_and_flax_values_and_gradients():
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(3, 5, 7, 96)) * 4 + 2).astype(np.float32)  # an offset mean: a one-pass variance would lose digits
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
