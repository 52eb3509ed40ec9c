"""The Pallas LayerNorm kernels (interpret mode on the CPU) against their XLA twin: values and gradients with and
without the fused residual add, the module's parameters and outputs against Flax's, a ViT with them against one
without, when `auto` picks them, and their real Triton lowering through jax.export."""
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_models import kernels, models
from vision_models.errors import ConfigError
from vision_models.models import layers
from vision_models.models.layer_norm import FusedLayerNorm

layer_norm_module = importlib.import_module('vision_models.kernels.layer_norm')  # the function shadows it


def normal(seed, *shape, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32), dtype)


# rows not a multiple of the backward's rows per program; features not a power of two (masked lanes)
@pytest.mark.parametrize('shape,dtype,tol', [((3, 25, 24), jnp.float32, 2e-5), ((70, 40), jnp.float32, 2e-5),
                                             ((2, 33, 48), jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize('fused', [True, False], ids=['with_residual', 'plain'])
def test_kernels_match_reference(shape, dtype, tol, fused):
  x, residual, ds, dy = (normal(seed, *shape, dtype=dtype) for seed in range(4))
  scale, bias = 1 + normal(4, shape[-1]), normal(5, shape[-1])
  if fused:
    ours = jax.vjp(lambda *a: kernels.add_layer_norm(*a, 1e-6, True), x, residual, scale, bias)
    want = jax.vjp(lambda *a: layer_norm_module.layer_norm_reference(*a, 1e-6), x, residual, scale, bias)
    cotangent = (ds, dy)
  else:
    ours = jax.vjp(lambda *a: kernels.layer_norm(*a, 1e-6, True), x, scale, bias)
    want = jax.vjp(lambda x, s, b: layer_norm_module.layer_norm_reference(x, None, s, b, 1e-6)[1], x, scale, bias)
    cotangent = dy
  got, expected = jax.tree.leaves((ours[0], ours[1](cotangent))), jax.tree.leaves((want[0], want[1](cotangent)))
  assert len(got) == len(expected) == (6 if fused else 4)
  for a, b in zip(got, expected):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol, rtol=tol)


def test_module_matches_flax_layer_norm():
  x, residual = normal(0, 2, 9, 40), normal(1, 2, 9, 40)
  flax_norm, ours = nn.LayerNorm(1e-6), FusedLayerNorm(1e-6)
  params = flax_norm.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, params)
  params = jax.tree.map(lambda p: p + normal(2, *p.shape), params)
  np.testing.assert_allclose(ours.apply(params, x), flax_norm.apply(params, x), atol=1e-5)
  s, y = ours.apply(params, x, residual)
  np.testing.assert_allclose(s, x + residual, atol=1e-6)
  np.testing.assert_allclose(y, flax_norm.apply(params, x + residual), atol=1e-5)


@pytest.mark.parametrize('variant', [
    dict(),
    dict(pool='gap'),  # fc_norm after pooling: the last residual add is a plain one
    dict(pool='gap', fc_norm=False),
    dict(distilled=True),
    dict(parallel_blocks=True, layer_scale=0.5),  # two norms per add: the first fused, the second plain
], ids=['token', 'gap_fc_norm', 'gap_norm', 'distilled', 'parallel_layer_scale'])
def test_vit_with_the_kernels_matches_vit_without(variant):
  # Every residual add meets a norm: each block's norm2, the later blocks' norm1 and the final norm add in their pass.
  kw = dict(num_classes=5, patch_size=4, width=24, depth=2, num_heads=2, mlp_dim=48, **variant)
  images = normal(0, 2, 16, 16, 3)
  xla, pallas = models.create('vit', norm_impl='xla', **kw), models.create('vit', norm_impl='pallas', **kw)
  params = nn.unbox(xla.init(jax.random.key(0), images))['params']
  params = jax.tree.map(lambda p: p + 0.1 * normal(p.size, *p.shape), params)
  assert jax.tree.map(jnp.shape, nn.unbox(pallas.init(jax.random.key(0), images))['params']) == jax.tree.map(
      jnp.shape, params)
  loss = lambda model: lambda p: jnp.sum(model.apply({'params': p}, images) ** 2)  # noqa: E731
  if not variant:
    assert str(jax.make_jaxpr(loss(pallas))(params)).count('pallas_call') == 5  # block 0's norm1 alone, 4 fused
  got, expected = jax.value_and_grad(loss(pallas))(params), jax.value_and_grad(loss(xla))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5), got, expected)


def test_auto_picks_the_kernels_on_one_gpu(monkeypatch):
  assert layers.kernel_default('auto') == 'xla'  # on the CPU
  assert layers.kernel_default('pallas') == 'pallas'
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert layers.kernel_default('auto') == 'pallas'
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((2,), ('data',))):
    assert layers.kernel_default('auto') == 'xla'  # a Pallas call would gather sharded inputs whole
  with pytest.raises(ConfigError, match="unknown kernel impl 'triton'"):
    layers.layer_norm(impl='triton')
  monkeypatch.setattr(jax, 'default_backend', lambda: 'tpu')  # Triton kernels: refused by name, not in lowering
  with pytest.raises(ConfigError, match="'pallas' names Triton"):
    layers.layer_norm(impl='pallas')
  assert layers.kernel_default('auto') == 'xla'


def test_lowers_for_real():
  # ViT-B/16's activations: the Triton kernels lower (forward and backward) for an H100.
  gpu = jax.sharding.AbstractDevice('NVIDIA H100 80GB HBM3', 132, 'gpu')
  x, p = jax.ShapeDtypeStruct((4, 198, 768), jnp.bfloat16), jax.ShapeDtypeStruct((768,), jnp.float32)
  loss = lambda x, r, s, b: sum(t.astype(jnp.float32).sum() for t in kernels.add_layer_norm(x, r, s, b))  # noqa: E731
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=gpu)):
    exported = jax.export.export(jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))), platforms=['cuda'], disabled_checks=[
        jax.export.DisabledSafetyCheck.custom_call('__gpu$xla.gpu.triton')])(x, x, p, p)
  assert exported.mlir_module().count('__gpu$xla.gpu.triton') == 2  # forward, backward
