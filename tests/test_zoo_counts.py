"""ConvNeXt (V1, V2), MLP-Mixer, DeiT distilled and DeiT III: exact parameter counts against timm for every registered
variant (abstractly, with jax.eval_shape) and the closed forms of models.md section 8."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from vision_models import models
from vision_models.models import convnext, mixer

# timm 1.0.31, num_classes=1000, at the name's resolution (shared/references/models.md, section 0). mixer_h14 is not
# a timm model name: its count is timm's MlpMixer(patch_size=14, num_blocks=32, embed_dim=1280) (computed).
TIMM_COUNTS = {
    'convnext_t': 28_589_128, 'convnext_s': 50_223_688, 'convnext_b': 88_591_464, 'convnext_l': 197_767_336,
    'convnext_xl': 350_196_968,
    'convnextv2_a': 3_708_400, 'convnextv2_f': 5_233_240, 'convnextv2_p': 9_066_280, 'convnextv2_n': 15_623_800,
    'convnextv2_t': 28_635_496, 'convnextv2_b': 88_717_800, 'convnextv2_l': 197_956_840,
    'convnextv2_h': 660_289_640,
    'mixer_s32': 19_104_624, 'mixer_s16': 18_528_264, 'mixer_b32': 60_293_428, 'mixer_b16': 59_880_472,
    'mixer_l32': 206_939_264, 'mixer_l16': 208_196_168, 'mixer_h14': 432_350_952,
    'deit_ti16_distilled': 5_910_800, 'deit_s16_distilled': 22_436_432, 'deit_b16_distilled': 87_338_192,
    'deit3_s16': 22_059_496, 'deit3_b16': 86_585_320, 'deit3_l16': 304_374_760, 'deit3_h14': 632_126_440,
}
FAMILIES = ('convnext', 'mixer_', 'deit')


def abstract_params(model, image=224):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, image, image, 3))))
  return nn.unbox(variables['params'])


def convnext_count(depths, dims, grn=False, classes=1000):
  """Section 8 of models.md: stem, downsamples, blocks (γ or GRN), head."""
  total = 48 * dims[0] + dims[0] + 2 * dims[0]
  for i, (depth, d) in enumerate(zip(depths, dims)):
    if i:
      total += 2 * dims[i - 1] + 4 * dims[i - 1] * d + d
    total += depth * (49 * d + d + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d) + (8 * d if grn else d))
  return total + 2 * dims[-1] + dims[-1] * classes + classes


def mixer_count(width, depth, tokens_mlp, channels_mlp, patch, image=224, classes=1000):
  seq = (image // patch) ** 2
  block = 2 * width + (seq * tokens_mlp + tokens_mlp) + (tokens_mlp * seq + seq) + 2 * width + (
      width * channels_mlp + channels_mlp) + (channels_mlp * width + width)
  return patch ** 2 * 3 * width + width + depth * block + 2 * width + width * classes + classes


def test_every_registered_variant_has_a_timm_count():
  ours = {n for n in models.names() if n.startswith(FAMILIES) and n not in ('convnext', 'mixer')}
  assert ours == set(TIMM_COUNTS)


@pytest.mark.parametrize('name', sorted(TIMM_COUNTS))
def test_param_count_matches_timm(name):
  image = 32 if name.startswith('convnext') else 224  # ConvNeXt's count does not depend on the resolution.
  assert models.param_count(abstract_params(models.create(name), image)) == TIMM_COUNTS[name]


def test_closed_forms_agree_with_timm_counts():
  for size, (depths, dims) in convnext.V1.items():
    assert convnext_count(depths, dims) == TIMM_COUNTS[f'convnext_{size}']
  for size, (depths, dims) in convnext.V2.items():
    assert convnext_count(depths, dims, grn=True) == TIMM_COUNTS[f'convnextv2_{size}']
  for size, (width, depth, tokens, channels) in mixer.VARIANTS.items():
    for patch in mixer.PATCHES[size]:
      assert mixer_count(width, depth, tokens, channels, patch) == TIMM_COUNTS[f'mixer_{size}{patch}']


def test_backbone_counts_match_timm():
  assert models.param_count(abstract_params(models.create('convnext_t', num_classes=0), 32)) == 27_820_128
  assert models.param_count(abstract_params(models.create('convnextv2_a', num_classes=0), 32)) == 3_387_400
  assert models.param_count(abstract_params(models.create('mixer_b16', num_classes=0))) == 59_111_472
  assert models.param_count(abstract_params(models.create('deit_ti16_distilled', num_classes=0))) == 5_524_800
