"""ConvNeXt (V1, V2), MLP-Mixer, DeiT distilled and DeiT III: forward behaviour (drop path, features, remat,
bfloat16), the configurable depthwise conv, weight-decay masks, the distilled head, config errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_models import models
from vision_models.errors import ConfigError
from vision_models.models import convnext
from vision_models.training import optim


def abstract_params(model, image, channels=3):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, image, image, channels))))
  return nn.unbox(variables['params'])


SMALL = {
    'convnext': dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32)),
    'convnextv2': dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), grn=True, layer_scale=None),
    'mixer': dict(patch_size=4, width=32, depth=2, tokens_mlp_dim=16, channels_mlp_dim=64),
}


def small(kind, **kwargs):
  return models.create('convnext' if kind.startswith('convnext') else kind, **{**SMALL[kind], **kwargs})


def randomised(model, images):
  """Random variables with every parameter (zero-initialised heads and GRN included) random, so outputs depend on
  everything. numpy fills the shapes: compiling the initialisers costs more than the tests themselves."""
  rng = np.random.default_rng(0)
  params = abstract_params(model, images.shape[1], images.shape[-1])
  return {'params': jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.1, x.shape), jnp.float32), params)}


def run(model, variables, images):
  return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)


@pytest.mark.parametrize('kind', ['convnext', 'mixer'])
def test_forward_shapes_drop_path_and_features(kind):
  images = jax.random.normal(jax.random.key(2), (3, 32, 32, 3))
  model = small(kind, num_classes=7, drop_path=0.3)
  variables = randomised(model, images)
  logits = run(model, variables, images)
  assert logits.shape == (3, 7) and logits.dtype == jnp.float32
  train = jax.jit(lambda r: model.apply(variables, images, train=True, rngs={'dropout': r}))
  a, b, c = train(jax.random.key(3)), train(jax.random.key(3)), train(jax.random.key(4))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  features = run(small(kind, num_classes=0), variables, images)
  assert features.shape == (3, SMALL[kind].get('width') or SMALL[kind]['dims'][-1])


@pytest.mark.parametrize('kind', ['convnextv2'])
def test_remat_and_bfloat16(kind):
  images = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  model = small(kind, num_classes=7)
  variables = randomised(model, images)
  logits = run(model, variables, images)
  np.testing.assert_allclose(run(small(kind, num_classes=7, remat=True), variables, images), logits, atol=1e-6)
  low = run(small(kind, num_classes=7, dtype=jnp.bfloat16), variables, images)
  assert low.dtype == jnp.float32
  np.testing.assert_allclose(low, logits, atol=0.1 * float(jnp.abs(logits).max()))


def test_convnext_kernel_size_and_depthwise_impl():
  params = abstract_params(small('convnext', kernel_size=11), 32)
  assert params['stages_0_blocks_0']['conv_dw']['kernel'].shape == (11, 11, 1, 8)
  with pytest.raises(ConfigError, match='depthwise_impl'):
    abstract_params(small('convnext', depthwise_impl='cuda'), 32)
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 8))
  for k in (3, 4):  # Odd and even kernels: the same 'SAME' padding.
    xla, shift = convnext.depthwise_conv(8, k, 'xla'), convnext.depthwise_conv(8, k, 'shift')
    variables = randomised(xla, x)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, randomised(shift, x))
    np.testing.assert_allclose(shift.apply(variables, x), xla.apply(variables, x), atol=1e-5)


def test_convnext_layer_scale_and_grn_skip_weight_decay():
  for kind, skipped in (('convnext', ('ls', 'gamma')), ('convnextv2', ('mlp', 'grn', 'weight'))):
    params = abstract_params(small(kind), 32)
    mask = optim.decay_mask(params)['stages_1_blocks_0']
    assert mask['mlp']['fc1']['kernel'] and mask['conv_dw']['kernel']
    assert not mask['mlp']['fc1']['bias'] and not mask['norm']['scale']
    node = mask
    for key in skipped:
      node = node[key]
    assert node is False


def test_distilled_output_is_the_mean_of_both_heads():
  kwargs = dict(patch_size=4, width=32, depth=1, num_heads=2, mlp_dim=64, distilled=True)
  model = models.create('vit', num_classes=5, **kwargs)
  images = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  variables = randomised(model, images)
  features = run(models.create('vit', num_classes=0, **kwargs), variables, images)  # (cls + dist) / 2
  head = variables['params']['head']
  # With equal heads the mean of the two logits is the head of the mean feature (the heads are affine).
  same = {'params': {**variables['params'], 'head_dist': head}}
  apply = jax.jit(lambda v: model.apply(v, images))
  np.testing.assert_allclose(apply(same), features @ head['kernel'] + head['bias'], atol=1e-5)
  assert not np.allclose(apply(variables), apply(same))
  with pytest.raises(ValueError, match="pool='token'"):
    abstract_params(models.create('vit', pool='gap', **kwargs), 8)


def test_deit3_has_no_position_for_the_class_token():
  params = abstract_params(models.create('deit3_s16'), 224)
  assert params['pos_embed'].shape == (1, 196, 384)
  assert params['blocks_0']['ls1']['gamma'].shape == (384,)
