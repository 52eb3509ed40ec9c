"""Long (FFT) convolution kernel: values and gradients against the XLA references, in interpret mode on the CPU."""
import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vision_models import kernels
from vision_models.errors import ConfigError
lc = importlib.import_module('vision_models.kernels.long_conv')  # The package attribute is the function.
# Interpret-mode kernels are large XLA programs; a low backend optimisation level halves their compile time.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def vjp(fn, *args):
  """fn(*args) and its VJP for a fixed random cotangent, jitted together (fwd + bwd kernels in one program)."""
  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run(*args):
    y, pull = jax.vjp(fn, *args)
    cot = jax.random.normal(jax.random.key(7), y.shape, jnp.float32).astype(y.dtype)
    return (y,) + pull(cot)
  return run(*args)


def assert_close(actual, expected, tol):
  """Max abs error within tol x the largest reference magnitude (relative-ish, robust to near-zero entries)."""
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  assert actual.shape == expected.shape
  np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * np.abs(expected).max())


def inputs(batch, length, channels, klen, dtype=jnp.float32):
  u = jax.random.normal(jax.random.key(0), (batch, length, channels)).astype(dtype)
  k = jax.random.normal(jax.random.key(1), (klen, channels)) / np.sqrt(klen)
  return u, k


@pytest.mark.parametrize('batch,length,channels,klen,causal,dtype,tol', [
    (2, 100, 3, 37, True, jnp.float32, 1e-5),  # length and kernel not powers of two
    (1, 50, 4, 77, False, jnp.float32, 1e-5),  # centred kernels may be longer than the signal (up to 2L - 1)
    (2, 64, 8, 64, False, jnp.bfloat16, 2e-2),  # even kernel: the centre is tap K // 2
])
def test_values_and_gradients_match_references(batch, length, channels, klen, causal, dtype, tol):
  u, k = inputs(batch, length, channels, klen, dtype)
  got = vjp(functools.partial(kernels.long_conv, causal=causal), u, k)
  want = vjp(functools.partial(kernels.long_conv_direct, causal=causal), u.astype(jnp.float32), k)
  assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == jnp.float32
  for g, w in zip(got, want):
    assert_close(g, w, tol)
  assert_close(kernels.long_conv_fft(u, k, causal=causal), want[0], tol)


def test_three_stage_factorisation_at_64k():
  """L = 65536 needs N = 2^17 = 2 x 256 x 256: the radix stage on top of the two matmul stages (forward only)."""
  assert lc.fft_factors(2 ** 17) == (2, 256, 256) and lc.fft_factors(2 ** 16) == (1, 256, 256)
  u, k = inputs(1, 65536, 2, 3000)
  assert_close(jax.jit(kernels.long_conv, compiler_options=FAST_COMPILE)(u, k), kernels.long_conv_fft(u, k), 1e-5)


def test_2d_values_and_gradients():
  x = jax.random.normal(jax.random.key(0), (2, 14, 10, 5))
  k = jax.random.normal(jax.random.key(1), (27, 7, 5)) / 10  # 27 = 2h - 1 rows: a global filter along H
  got, want = vjp(kernels.long_conv2d, x, k), vjp(kernels.long_conv2d_direct, x, k)
  for g, w in zip(got, want):
    assert_close(g, w, 1e-5)
  assert_close(kernels.long_conv2d_fft(x, k), want[0], 1e-5)


def test_vmap():
  u, k = inputs(3, 40, 4, 21)
  u = jnp.stack([u, 2 * u])  # An extra leading axis mapped over, the kernel shared.
  conv = jax.vmap(functools.partial(kernels.long_conv, causal=False), in_axes=(0, None))
  ref = jax.vmap(functools.partial(kernels.long_conv_direct, causal=False), in_axes=(0, None))
  for g, w in zip(vjp(conv, u, k), vjp(ref, u, k)):
    assert_close(g, w, 1e-5)


def test_shard_map_over_batch_and_channels():
  mesh = jax.make_mesh((4, 2), ('data', 'model'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  u, k = inputs(8, 48, 4, 48)
  specs = dict(mesh=mesh, in_specs=(P('data', None, 'model'), P(None, 'model')), out_specs=P('data', None, 'model'))
  # check_vma=False: Pallas' interpret mode (hlo_interpreter) fails its own varying-axes check ("Scan carry input and
  # output got mismatched varying manual axes"); compiled kernels keep it on (tests/test_conv_lowering.py).
  sharded = jax.shard_map(kernels.long_conv, check_vma=False, **specs)
  for g, w in zip(vjp(sharded, u, k), vjp(kernels.long_conv_direct, u, k)):
    assert_close(g, w, 1e-5)


def test_bad_input_raises_config_error():
  u, k = inputs(1, 16, 2, 17)
  with pytest.raises(ConfigError, match='kernel length 17'):
    kernels.long_conv(u, k, causal=True)
  with pytest.raises(ConfigError, match='equal channels'):
    kernels.long_conv(u, k[:, :1], causal=False)
  with pytest.raises(ConfigError, match='exceeds'):
    kernels.long_conv(jnp.zeros((1, 2 ** 20, 1)), jnp.zeros((2 ** 19, 1)))
