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
