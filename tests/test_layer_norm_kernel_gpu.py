"""The LayerNorm kernels compiled by Triton on a real GPU (skipped elsewhere; the CPU suite checks them in interpret
mode): values and gradients against the XLA twin at ViT-B/16's shape, with and without the residual add."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_models import kernels

pytestmark = pytest.mark.skipif(jax.default_backend() != 'gpu', reason='the Triton kernels need a GPU')
reference = importlib.import_module('vision_models.kernels.layer_norm').layer_norm_reference


@pytest.mark.parametrize('dtype,tol', [('bfloat16', 2e-2), ('float32', 1e-4)])
@pytest.mark.parametrize('fused', [True, False], ids=['with_residual', 'plain'])
def test_triton_kernels_match_reference(dtype, tol, fused):
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32), dtype)  # noqa: E731
  x, residual, ds, dy = (normal(8, 198, 768) for _ in range(4))
  scale, bias = 1 + normal(768).astype(jnp.float32), normal(768).astype(jnp.float32)
  if fused:
    args, cotangent = (x, residual, scale, bias), (ds, dy)
    ours = lambda *a: kernels.add_layer_norm(*a, 1e-6)  # noqa: E731
    want = lambda *a: reference(*a, 1e-6)  # noqa: E731
  else:
    args, cotangent = (x, scale, bias), dy
    ours = lambda *a: kernels.layer_norm(*a, 1e-6)  # noqa: E731
    want = lambda x, s, b: reference(x, None, s, b, 1e-6)[1]  # noqa: E731

  def value_and_grads(fn):
    out, vjp = jax.vjp(fn, *args)
    return jax.tree.leaves((out, vjp(cotangent)))

  for got, expected in zip(jax.jit(lambda: value_and_grads(ours))(), jax.jit(lambda: value_and_grads(want))()):
    error = jnp.linalg.norm(got.astype(jnp.float32) - expected.astype(jnp.float32)) / jnp.linalg.norm(
        expected.astype(jnp.float32))
    assert np.isfinite(float(error)) and float(error) < tol
