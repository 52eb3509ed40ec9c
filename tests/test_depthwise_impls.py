"""ConvNeXt gives the same logits with every depthwise implementation (XLA, shifted products, the Pallas kernel)."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from vision_models import models
from vision_models.errors import ConfigError


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
