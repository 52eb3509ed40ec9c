"""The GELU MLP's fused backward product (`kernels.dgelu_matmul`, interpret mode on the CPU) against its XLA twin, a
ViT's gradients with it against autodiff's, the shapes it refuses, and its real Triton lowering through jax.export."""
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_models import kernels, models
from vision_models.errors import ConfigError

gelu_matmul = importlib.import_module('vision_models.kernels.gelu_matmul')


def normal(seed, *shape, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32), dtype)


@pytest.mark.parametrize('dtype,tol', [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-2)])
def test_kernel_matches_reference(dtype, tol):
  dy, w, pre = normal(0, 256, 192, dtype=dtype), normal(1, 384, 192, dtype=dtype), 3 * normal(2, 256, 384, dtype=dtype)
  got, want = kernels.dgelu_matmul(dy, w, pre, interpret=True), gelu_matmul.dgelu_matmul_reference(dy, w, pre)
  for a, b in zip(got, want):
    assert a.shape == b.shape and a.dtype == b.dtype
    error = np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)) / np.linalg.norm(np.asarray(b))
    assert error < tol


def test_slope_is_the_derivative():
  x = np.linspace(-8, 8, 1001)
  u = np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)
  exact = 0.5 * (1 + np.tanh(u)) + 0.5 * x * (1 - np.tanh(u) ** 2) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * x ** 2)
  np.testing.assert_allclose(kernels.gelu_tanh_slope(jnp.asarray(x, jnp.float32)), exact, atol=1e-6)


def test_refuses_partial_tiles():
  assert kernels.dgelu_fits(50688, 3072, 768) and not kernels.dgelu_fits(197 * 8, 3072, 768)
  with pytest.raises(ValueError, match='whole 128x128x64 tiles'):
    kernels.dgelu_matmul(jnp.zeros((100, 64)), jnp.zeros((128, 64)), jnp.zeros((100, 128)), interpret=True)


def test_vit_gradients_match_autodiff():
  # 8 images x 16 patches = 128 rows, hidden 128, width 64: whole tiles, so every block's MLP takes the kernel.
  kw = dict(num_classes=5, patch_size=4, width=64, depth=2, num_heads=2, mlp_dim=128, pool='gap', mlp='mlp_tanh')
  images = normal(0, 8, 16, 16, 3)
  xla = models.create('vit', **kw)
  fused = models.create('vit', mixer_options={'mlp_tanh': {'backward': 'pallas'}}, **kw)
  params = nn.unbox(xla.init(jax.random.key(0), images))['params']
  params = jax.tree.map(lambda p: p + 0.1 * normal(p.size, *p.shape), params)
  loss = lambda model: lambda p: jnp.sum(model.apply({'params': p}, images) ** 2)  # noqa: E731
  assert str(jax.make_jaxpr(jax.grad(loss(fused)))(params)).count('jit[name=dgelu_matmul') == 2  # one a block
  got, expected = jax.value_and_grad(loss(fused))(params), jax.value_and_grad(loss(xla))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), got, expected)
  with pytest.raises(ConfigError, match="unknown kernel impl 'triton'"):
    models.create('vit', mixer_options={'mlp_tanh': {'backward': 'triton'}}, **kw).init(jax.random.key(0), images)


def test_lowers_for_real():
  gpu = jax.sharding.AbstractDevice('NVIDIA H100 80GB HBM3', 132, 'gpu')
  shapes = [jax.ShapeDtypeStruct(s, jnp.bfloat16) for s in ((50688, 768), (3072, 768), (50688, 3072))]
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=gpu)):
    exported = jax.export.export(jax.jit(kernels.dgelu_matmul), platforms=['cuda'], disabled_checks=[
        jax.export.DisabledSafetyCheck.custom_call('__gpu$xla.gpu.triton')])(*shapes)
  assert exported.mlir_module().count('__gpu$xla.gpu.triton') == 1
