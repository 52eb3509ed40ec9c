"""`patch_conv`: pointwise and patch convolutions as matrix products, and other stride-1 convolutions with their
kernel gradient as one product, equal to `lax` in values and gradients."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vision_models.models import patch_conv

NHWC = ('NHWC', 'HWIO', 'NHWC')


def conv_pair(x_shape, kernel, stride, padding, groups=1, dimension_numbers=NHWC, channels=None):
  """`lax` and `patch_conv` as functions of (x, w), with the dimension numbers `nn.Conv` passes."""
  def make(conv):
    def fn(x, w):
      numbers = lax.conv_dimension_numbers(x.shape, w.shape, dimension_numbers)
      return conv(x, w, (stride, stride), padding, dimension_numbers=numbers, feature_group_count=groups,
                  precision=lax.Precision.HIGHEST)
    return fn
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, (channels or x_shape[-1]) // groups, 6)), jnp.float32)
  return make(lax.conv_general_dilated), make(patch_conv.conv_general_dilated), x, w


def uses_conv(fn, *args) -> bool:
  return 'conv_general_dilated' in str(jax.make_jaxpr(jax.grad(lambda *a: fn(*a).sum(), (0, 1)))(*args))


@pytest.mark.parametrize('x_shape,kernel,stride,padding,as_product', [
    ((2, 8, 8, 3), 1, 1, 'SAME', True),                 # pointwise
    ((2, 8, 8, 3), 1, 1, [(0, 0), (0, 0)], True),      # explicit zero padding
    ((2, 16, 16, 3), 4, 4, 'SAME', True),               # ViT / ConvNeXt stem: SAME pads nothing
    ((2, 9, 11, 3), 2, 2, 'VALID', True),               # VALID drops the last row and column
    ((2, 10, 10, 3), 4, 4, 'SAME', False),              # SAME pads: left to lax
    ((2, 8, 8, 3), 3, 1, 'SAME', False),                # overlapping windows
    ((2, 8, 8, 3), 2, 1, 'VALID', False),               # kernel larger than stride
])
def test_equals_lax_in_values_and_gradients(x_shape, kernel, stride, padding, as_product):
  ref, ours, x, w = conv_pair(x_shape, kernel, stride, padding)
  chex.assert_trees_all_close(ours(x, w), ref(x, w), atol=1e-5, rtol=1e-5)
  loss = lambda fn: jax.grad(lambda *a: (fn(*a) ** 2).sum(), (0, 1))(x, w)
  chex.assert_trees_all_close(loss(ours), loss(ref), atol=1e-4, rtol=1e-5)
  assert uses_conv(ours, x, w) != as_product
  assert uses_conv(ref, x, w)


@pytest.mark.parametrize('x_shape,groups,dimension_numbers', [
    ((2, 8, 8, 3), 3, NHWC),                            # depthwise
    ((2, 3, 8, 8), 1, ('NCHW', 'HWIO', 'NCHW')),        # channels first
])
def test_grouped_or_other_layouts_go_to_lax(x_shape, groups, dimension_numbers):
  channels = x_shape[dimension_numbers[0].index('C')]
  ref, ours, x, w = conv_pair(x_shape, 1, 1, 'VALID', groups, dimension_numbers, channels)
  chex.assert_trees_all_close(ours(x, w), ref(x, w))
  assert uses_conv(ours, x, w)


@pytest.mark.parametrize('kernel,stride', [(16, 16), (1, 1), (3, 1)])
def test_other_backends_keep_lax_convolutions(kernel, stride, monkeypatch):
  # On an H100 the patch embedding as a product made ViT-B/16's step 9 ms slower than cuDNN's strided convolution.
  ref, ours, x, w = conv_pair((2, 32, 32, 3), kernel, stride, 'VALID')
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert uses_conv(ours, x, w)
  assert 'dot_general' not in str(jax.make_jaxpr(jax.grad(lambda *a: ours(*a).sum(), (0, 1)))(x, w))


def test_conv_module_keeps_nn_conv_parameters_and_outputs():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
  kwargs = dict(features=8, kernel_size=(16, 16), strides=(16, 16), padding='VALID', precision='highest')
  params = nn.Conv(**kwargs).init(jax.random.key(0), x)
  ours = patch_conv.Conv(**kwargs)
  chex.assert_trees_all_equal_shapes_and_dtypes(ours.init(jax.random.key(0), x), params)
  chex.assert_trees_all_close(ours.apply(params, x), nn.Conv(**kwargs).apply(params, x), atol=1e-5, rtol=1e-5)


def test_one_dimensional_conv_goes_to_lax():
  x, w = jnp.ones((2, 12, 3)), jnp.ones((4, 3, 5))
  numbers = lax.conv_dimension_numbers(x.shape, w.shape, ('NWC', 'WIO', 'NWC'))
  ours = patch_conv.conv_general_dilated(x, w, (4,), 'VALID', dimension_numbers=numbers)
  chex.assert_trees_all_close(ours, lax.conv_general_dilated(x, w, (4,), 'VALID', dimension_numbers=numbers))


def conv_count(fn, *args) -> int:
  """Convolutions in the jaxpr of the gradient (forward, input gradient and, for `lax`, kernel gradient)."""
  return str(jax.make_jaxpr(jax.grad(lambda *a: fn(*a).sum(), (0, 1)))(*args)).count('conv_general_dilated')


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the product is for XLA:CPU only')
@pytest.mark.parametrize('x_shape,kernel_hw,padding', [
    ((2, 9, 7, 4), (3, 3), 'SAME'),                     # MaxViT's stem conv
    ((2, 9, 7, 4), (5, 3), ((2, 1), (0, 2))),           # rectangular kernel, uneven padding
    ((1, 6, 6, 2), (2, 2), 'VALID'),                    # no padding, even kernel
])
def test_stride_one_kernel_gradient_is_a_product(x_shape, kernel_hw, padding):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(*kernel_hw, x_shape[-1], 5)), jnp.float32)
  def make(conv):
    return lambda x, w: conv(x, w, (1, 1), padding, dimension_numbers=lax.conv_dimension_numbers(
        x.shape, w.shape, NHWC), precision=lax.Precision.HIGHEST)
  ref, ours = make(lax.conv_general_dilated), make(patch_conv.conv_general_dilated)
  chex.assert_trees_all_close(ours(x, w), ref(x, w), atol=1e-5, rtol=1e-5)
  loss = lambda fn: jax.grad(lambda *a: jnp.sin(fn(*a)).sum(), (0, 1))(x, w)
  chex.assert_trees_all_close(loss(ours), loss(ref), atol=1e-4, rtol=1e-5)
  assert (conv_count(ours, x, w), conv_count(ref, x, w)) == (2, 3)  # the kernel gradient is the product
