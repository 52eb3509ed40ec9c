"""timm → ours, logits parity for one full-size model per family (ViT, DeiT distilled, DeiT III, ConvNeXt,
ConvNeXt V2, Mixer): random weights, converted, max abs logit difference ≤ 1e-5 of the logits' spread in float32 on
a batch of 2, and the registry name the timm name maps to."""
import pytest

from parity import TOLERANCE, compare, randomise
from vision_models.convert.variants import closest_name

timm = pytest.importorskip('timm')

FULL = {  # timm name: (our registry name, image size). ConvNeXt's weights fit any size: 128 px keeps the CPU test fast.
    'vit_tiny_patch16_224': ('vit_ti16', 224),
    'deit_tiny_distilled_patch16_224': ('deit_ti16_distilled', 224),
    'deit3_small_patch16_224': ('deit3_s16', 224),
    'convnext_tiny': ('convnext_t', 128),
    'convnextv2_atto': ('convnextv2_a', 128),
    'mixer_s32_224': ('mixer_s32', 224),
}


@pytest.mark.parametrize('timm_name', sorted(FULL))
def test_full_size_models_match_timm(timm_name):
  ours, image_size = FULL[timm_name]
  model = randomise(timm.create_model(timm_name, pretrained=False))
  module, diff = compare(model, timm_name, image_size)
  assert closest_name(module) == (ours, {})
  assert diff <= TOLERANCE
