"""The GELU MLP's fused backward product compiled by Triton on a real GPU (skipped elsewhere; the CPU suite checks it
in interpret mode), against its float32 XLA twin with ViT-B/16's widths."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_models import kernels

pytestmark = pytest.mark.skipif(jax.default_backend() != 'gpu', reason='the Triton kernel needs a GPU')
reference = importlib.import_module('vision_models.kernels.gelu_matmul').dgelu_matmul_reference


@pytest.mark.parametrize('dtype,tol', [('bfloat16', 1e-2), ('float32', 2e-3)])  # float32 dots run as TF32
def test_triton_kernel_matches_reference(dtype, tol):
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32), dtype)  # noqa: E731
  dy, w, pre = normal(768, 768), normal(3072, 768), 3 * normal(768, 3072)  # rows: whole 128-row tiles
  for got, want in zip(jax.jit(kernels.dgelu_matmul)(dy, w, pre), jax.jit(reference)(
      dy.astype(jnp.float32), w.astype(jnp.float32), pre.astype(jnp.float32))):
    error = jnp.linalg.norm(got.astype(jnp.float32) - want) / jnp.linalg.norm(want)
    assert np.isfinite(float(error)) and float(error) < tol
