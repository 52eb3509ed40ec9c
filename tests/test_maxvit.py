"""MaxViT: parameter counts against timm's, train-mode shapes and BatchNorm state, config errors, and logit parity
with randomly initialised timm `maxvit_*_tf_*` models through the converter."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parity import TOLERANCE, randomise, relative_diff
from vision_models import convert, models
from vision_models.errors import ConfigError
from vision_models.models import layers

# timm 1.0.31, num_classes=1000 (shared/references/models.md, section 0).
TIMM_COUNTS = {
    ('maxvit_t', 224): 30_916_528,
    ('maxvit_s', 224): 68_927_956,
    ('maxvit_b', 224): 119_467_708,
    ('maxvit_l', 224): 211_785_560,
    ('maxvit_xl', 224): 474_951_952,
    ('maxvit_t', 384): 30_977_008,
    ('maxvit_t', 512): 31_049_584,
}
SMALL = dict(stem_width=16, dims=(32, 64), depths=(1, 1), image_size=32, partition_ratio=8)  # window 4


def abstract_variables(model, image):
  return jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, image, image, 3)))))


def random_variables(model, image):
  """Random values in the shapes `init` gives: compiling a random init costs minutes on a busy 2-core CPU."""
  rng = np.random.default_rng(0)
  def value(path, spec):
    x = rng.normal(0, 0.2, spec.shape).astype(np.float32)
    return np.abs(x) + 0.5 if path[-1].key in ('var', 'scale') else x
  return jax.tree_util.tree_map_with_path(value, abstract_variables(model, image))


def test_every_variant_is_counted():
  assert {n for n in models.names() if n.startswith('maxvit_')} == {n for n, _ in TIMM_COUNTS}


@pytest.mark.parametrize('name,image', list(TIMM_COUNTS))
def test_param_count_matches_timm(name, image):
  variables = abstract_variables(models.create(name, image_size=image), image)
  assert models.param_count(variables['params']) == TIMM_COUNTS[name, image]
  if name == 'maxvit_t':  # timm's BatchNorm running-stat buffers (not parameters).
    assert models.param_count(variables['batch_stats']) == 47_616


def test_train_mode_updates_batch_stats_and_is_deterministic():
  model = models.create('maxvit', num_classes=5, drop_path=0.2, **SMALL)
  remat = models.create('maxvit', num_classes=5, drop_path=0.2, remat=True, **SMALL)
  features = models.create('maxvit', num_classes=0, **SMALL)
  images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  variables = random_variables(model, 32)
  assert set(variables) == {'params', 'batch_stats'}
  assert variables['params']['stages_0_blocks_0']['attn_grid']['relative_position_bias_table'].shape == (1, 7, 7)

  @jax.jit  # One compilation for everything below: compiling is what costs on the CPU.
  def run(variables):
    def train(module, seed):
      return module.apply(variables, images, train=True, rngs={'dropout': jax.random.key(seed)},
                          mutable=['batch_stats'])
    return (train(model, 2), train(model, 2)[0], train(model, 3)[0], train(remat, 2)[0],
            model.apply(variables, images, train=False), features.apply(variables, images))

  (logits, new_state), same_key, other_key, with_remat, evaluated, pooled = run(variables)
  assert logits.shape == (4, 5) and logits.dtype == jnp.float32
  assert jax.tree.structure(new_state['batch_stats']) == jax.tree.structure(variables['batch_stats'])
  assert not np.allclose(variables['batch_stats']['stem_norm1']['mean'], new_state['batch_stats']['stem_norm1']['mean'])
  np.testing.assert_array_equal(logits, same_key)
  assert not np.allclose(logits, other_key)
  np.testing.assert_allclose(with_remat, logits, atol=1e-5)
  assert not np.allclose(evaluated, logits)  # Eval reads the running statistics, train the batch's.
  assert pooled.shape == (4, 64) and np.abs(pooled).max() <= 1.0  # pre-logits after the tanh


@pytest.mark.parametrize('shape,stride,padding', [((2, 9, 8, 3), 2, 'SAME'), ((1, 7, 7, 4), 1, ((3, 3), (3, 3)))])
def test_depthwise_conv_matches_grouped_conv(shape, stride, padding):
  x = jax.random.normal(jax.random.key(0), shape)
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, shape[-1]))
  expected = jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding, feature_group_count=shape[-1],
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(layers.depthwise_conv(x, kernel, (stride, stride), padding), expected, atol=1e-5)


def test_bad_image_sizes_are_config_errors():
  with pytest.raises(ConfigError, match='image_size=200 is not divisible by 32'):
    abstract_variables(models.create('maxvit_t', image_size=200), 200)
  with pytest.raises(ConfigError, match='cannot take 256×256 images'):
    abstract_variables(models.create('maxvit_t'), 256)


# --- Conversion and parity against timm ----------------------------------------------------------------------------

def timm_model(name, **kwargs):
  torch = pytest.importorskip('torch')
  timm = pytest.importorskip('timm')
  torch.manual_seed(0)
  model = randomise(timm.create_model(name, pretrained=False, **kwargs))  # relative position tables included
  with torch.no_grad():  # Non-trivial BatchNorm statistics, so their conversion is tested.
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0, 0.2)
        module.running_var.uniform_(0.5, 2.0)
  return model


def assert_parity(timm_name, batch, image, **kwargs):
  torch = pytest.importorskip('torch')
  model = timm_model(timm_name, **kwargs)
  images = torch.randn(batch, 3, image, image, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    expected = model(images).numpy()
  ours, variables = convert.from_timm(timm_name, model.state_dict())
  assert set(variables) == {'params', 'batch_stats'}
  logits = jax.jit(lambda v, x: ours.apply(v, x, train=False))(variables, images.permute(0, 2, 3, 1).numpy())
  assert logits.shape == expected.shape
  assert relative_diff(logits, expected) <= TOLERANCE
  return ours


SMALL_TIMM = dict(embed_dim=(32, 64, 96, 128), depths=(1, 1, 1, 1), stem_width=16, head_hidden_size=128,
                  num_classes=10)


def test_parity_small_config_224():
  ours = assert_parity('maxvit_tiny_tf_224', 2, 224, **SMALL_TIMM)
  assert (ours.dims, ours.depths, ours.stem_width, ours.image_size) == ((32, 64, 96, 128), (1, 1, 1, 1), 16, 224)


def test_parity_maxvit_tiny_tf_224():
  ours = assert_parity('maxvit_tiny_tf_224', 1, 224)
  assert ours.num_classes == 1000 and ours.dims == (64, 128, 256, 512)


def test_conversion_errors_are_clear():
  state_dict = timm_model('maxvit_tiny_tf_224', **SMALL_TIMM).state_dict()
  with pytest.raises(ConfigError, match='384 px but the relative position tables are for 224 px'):
    convert.from_timm('maxvit_tiny_tf_384', state_dict)
  with pytest.raises(ConfigError, match='384 px but the relative position tables are for 224 px'):
    convert.from_timm('maxvit_tiny_tf_384.in1k', state_dict)  # the tag is not part of the architecture
  with pytest.raises(ConfigError, match='1 tensors of the state dict were not used: extra'):
    convert.from_timm('maxvit_tiny_tf_224', {**state_dict, 'extra': np.zeros(3)})
  with pytest.raises(ConfigError, match="no tensor 'head.norm.weight'"):
    convert.from_timm('maxvit_tiny_tf_224', {k: v for k, v in state_dict.items() if k != 'head.norm.weight'})
  with pytest.raises(ConfigError, match='only the TF-ported'):
    convert.from_timm('maxvit_rmlp_nano_rw_256', state_dict)
  assert convert.from_timm('maxvit_tiny_tf_224.in1k', state_dict)[0].image_size == 224
