"""Large-kernel depthwise convolution: values and gradients against lax.conv_general_dilated, interpret mode."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vision_models import kernels
from vision_models.errors import ConfigError
from vision_models.kernels import depthwise_conv as dc

# Interpret-mode kernels are large XLA programs; a low backend optimisation level halves their compile time.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def vjp(fn, *args):
  """fn(*args) and its VJP for a fixed random cotangent, jitted together (fwd, dx and dw kernels in one program)."""
  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run(*args):
    y, pull = jax.vjp(fn, *args)
    cot = jax.random.normal(jax.random.key(7), y.shape, jnp.float32).astype(y.dtype)
    return (y,) + pull(cot)
  return run(*args)


def assert_close(actual, expected, tol):
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  assert actual.shape == expected.shape
  np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * np.abs(expected).max())


def inputs(shape, kernel, dtype=jnp.float32):
  x = jax.random.normal(jax.random.key(0), shape).astype(dtype)
  w = (jax.random.normal(jax.random.key(1), kernel + shape[-1:]) / np.prod(kernel) ** 0.5).astype(dtype)
  return x, w


@pytest.mark.parametrize('shape,kernel,window_bytes', [
    ((2, 9, 11, 5), (3, 3), None),
    ((1, 20, 13, 130), (7, 7), None),  # channels over one lane block (128 + 2)
    ((1, 30, 15, 8), (13, 13), 16384),  # a small VMEM budget: 4 row blocks whose windows overlap by 12 rows
    ((1, 36, 33, 8), (31, 31), None),  # the RepLKNet size; H and W not multiples of 8
])
def test_values_and_gradients_match_lax(shape, kernel, window_bytes, monkeypatch):
  if window_bytes:
    monkeypatch.setattr(dc, 'WINDOW_BYTES', window_bytes)
    assert dc._layout(*shape[1:], *kernel, 4, 'interpret')['nh'] == 4
  x, w = inputs(shape, kernel)
  for g, r in zip(vjp(kernels.depthwise_conv2d, x, w), vjp(kernels.depthwise_conv2d_reference, x, w)):
    assert_close(g, r, 1e-5)


def test_even_rectangular_kernel_bfloat16():
  """'SAME' puts the extra tap of an even kernel on the high side, as lax does; bfloat16 in, bfloat16 out."""
  x, w = inputs((2, 12, 10, 16), (4, 6), jnp.bfloat16)
  got = vjp(kernels.depthwise_conv2d, x, w)
  want = vjp(kernels.depthwise_conv2d_reference, x.astype(jnp.float32), w.astype(jnp.float32))
  assert all(g.dtype == jnp.bfloat16 for g in got)
  for g, r in zip(got, want):
    assert_close(g, r, 2e-2)


def test_vmap():
  x, w = inputs((2, 10, 9, 8), (3, 3))
  xs = jnp.stack([x, -2 * x])
  conv = jax.vmap(kernels.depthwise_conv2d, in_axes=(0, None))
  ref = jax.vmap(kernels.depthwise_conv2d_reference, in_axes=(0, None))
  for g, r in zip(vjp(conv, xs, w), vjp(ref, xs, w)):
    assert_close(g, r, 1e-5)


def test_shard_map_over_batch_and_channels():
  mesh = jax.make_mesh((4, 2), ('data', 'model'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  x, w = inputs((8, 10, 9, 16), (3, 3))
  # check_vma=False: Pallas' interpret mode fails its own varying-axes check (see tests/test_long_conv.py).
  sharded = jax.shard_map(kernels.depthwise_conv2d, mesh=mesh, in_specs=(P('data', None, None, 'model'),
                                                                         P(None, None, 'model')),
                          out_specs=P('data', None, None, 'model'), check_vma=False)
  for g, r in zip(vjp(sharded, x, w), vjp(kernels.depthwise_conv2d_reference, x, w)):
    assert_close(g, r, 1e-5)


def test_bad_input_raises_config_error():
  with pytest.raises(ConfigError, match='expected x'):
    kernels.depthwise_conv2d(jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 5)))
