"""ConvNeXt gives the same logits with every depthwise implementation (XLA, shifted products, the Pallas kernel)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_models import models
from vision_models.errors import ConfigError
from vision_models.models import layers


@pytest.mark.parametrize('kernel_size', [7, 13])
def test_convnext_depthwise_impls_agree(kernel_size):
  kwargs = dict(num_classes=5, depths=(1, 1), dims=(16, 32), kernel_size=kernel_size)
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  reference = models.create('convnext', depthwise_impl='xla', **kwargs)
  variables = nn.unbox(reference.init(jax.random.key(1), images))
  variables['params'] = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape),
                                     variables['params'])  # The zero-initialised head would hide differences.
  expected = reference.apply(variables, images)
  for impl in ('shift', 'pallas', 'auto'):
    got = models.create('convnext', depthwise_impl=impl, **kwargs).apply(variables, images)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=impl)


def test_unknown_depthwise_impl():
  model = models.create('convnext', depthwise_impl='fft', depths=(1, 1), dims=(8, 16))
  with pytest.raises(ConfigError, match="unknown depthwise_impl 'fft'"):
    model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))


@pytest.mark.parametrize('shape,kernel_size,stride,padding', [
    ((2, 9, 8, 5), 3, 2, 'SAME'),  # MaxViT's strided 3×3: per-tap kernel gradient
    ((2, 12, 11, 6), 7, 1, 'SAME'),  # ConvNeXt's 7×7: kernel gradient through the FFT
    ((2, 13, 13, 3), 7, 2, 'SAME'),  # strided: per-tap
    ((1, 9, 10, 2), 5, 1, ((1, 0), (2, 3))),
    ((2, 2, 3, 4), 7, 1, 'SAME'),  # a map smaller than the kernel: taps that see only padding
])
def test_shift_values_and_gradients_match_grouped_conv(shape, kernel_size, stride, padding):
  x = jax.random.normal(jax.random.key(0), shape)
  kernel = jax.random.normal(jax.random.key(1), (kernel_size, kernel_size, 1, shape[-1]))

  def loss(impl):
    fn = lambda x, kernel: jnp.sum(jnp.sin(layers.depthwise_conv(x, kernel, (stride, stride), padding, impl)))
    return jax.value_and_grad(fn, argnums=(0, 1))(x, kernel)

  (value, grads), (expected, expected_grads) = jax.jit(lambda: (loss('shift'), loss('xla')))()
  np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-4)
  for got, want in zip(grads, expected_grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  # Exactly zero where XLA's is (taps that see only padding): Adam would turn rounding noise into full-size updates.
  np.testing.assert_array_equal(grads[1] == 0, expected_grads[1] == 0)


@pytest.mark.parametrize('kernel_size,stride,through_fft', [(7, 1, True), (5, 1, True), (3, 1, False), (7, 2, False)])
def test_shift_kernel_gradient_path(kernel_size, stride, through_fft):
  # Wide stride-1 kernels take the FFT correlation; narrow or strided ones the per-tap reductions.
  x, kernel = jnp.ones((1, 16, 16, 4)), jnp.ones((kernel_size, kernel_size, 1, 4))
  grad = jax.grad(lambda k: layers.depthwise_conv(x, k, (stride, stride), 'SAME', 'shift').sum())
  jaxpr = str(jax.make_jaxpr(grad)(kernel))
  assert ('fft' in jaxpr) == through_fft
  # The padded input is written once in each pass, so XLA does not recompute its producer in every shifted slice; the
  # forward's sum too, so its consumers do not recompute the taps.
  assert jaxpr.count('optimization_barrier') == 3


def test_shift_taps_summed_once_whatever_the_consumers():
  # A LayerNorm after the conv reads its output in several fusions (statistics, normalisation, their gradients): each
  # of the forward and the input gradient's tap sums is computed in one fusion, not once per consumer.
  x, kernel = jnp.ones((2, 12, 12, 8)), jnp.ones((7, 7, 1, 8))

  def loss(x, kernel):
    y = layers.depthwise_conv(x, kernel, (1, 1), 'SAME', 'shift')
    return jnp.sum(jnp.sin(layers.layer_norm().apply({'params': {'scale': jnp.ones(8), 'bias': jnp.zeros(8)}}, y)))

  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel).compile().as_text()
  slices_per_computation = [body.count(' slice(') for body in hlo.split('\n\n')]
  assert sum(count >= 49 for count in slices_per_computation) == 2
