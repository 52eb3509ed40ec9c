"""timm → ours, logits parity: timm models with random weights (no download), converted with `from_timm`, on the same
random batch in eval mode: max abs difference ≤ 1e-5 of the logits' spread in float32. Small configurations for every
family and layout variant (full-size models: test_timm_parity_full.py); name mapping; unused, missing, wrong and
DDP-prefixed tensors."""
import jax
import pytest

from parity import TOLERANCE, compare, randomise
from vision_models import convert
from vision_models.errors import ConfigError

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

VIT_SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)
CONVNEXT_SMALL = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 48), num_classes=10)
SMALL = {  # id: (timm name, timm kwargs, image size, from_timm kwargs)
    'vit': ('vit_tiny_patch16_224', VIT_SMALL, 32, dict(num_heads=4)),
    'vit_gap': ('vit_small_patch16_224', dict(VIT_SMALL, class_token=False, global_pool='avg'), 32,
                dict(num_heads=4)),
    'vit_gap_prenorm': ('vit_small_patch16_224', dict(VIT_SMALL, class_token=False, global_pool='avg', fc_norm=False),
                        32, dict(num_heads=4)),
    'deit_distilled': ('deit_tiny_distilled_patch16_224', VIT_SMALL, 32, dict(num_heads=4)),
    'deit3': ('deit3_small_patch16_224', dict(VIT_SMALL, depth=1), 32, dict(num_heads=4)),
    'convnext': ('convnext_tiny', dict(CONVNEXT_SMALL, kernel_sizes=5), 64, {}),
    'convnext_conv_mlp': ('convnext_atto', CONVNEXT_SMALL, 64, {}),
    'convnextv2': ('convnextv2_tiny', CONVNEXT_SMALL, 64, {}),
}


@pytest.mark.parametrize('case', sorted(SMALL))
def test_small_models_match_timm(case):
  timm_name, timm_kwargs, image_size, kwargs = SMALL[case]
  model = randomise(timm.create_model(timm_name, pretrained=False, **timm_kwargs))
  _, diff = compare(model, timm_name, image_size, **kwargs)
  assert diff <= TOLERANCE


def test_small_mixer_matches_timm():
  from timm.models.mlp_mixer import MlpMixer
  model = randomise(MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=2, embed_dim=64))
  _, diff = compare(model, 'mixer_s16_224', 32)
  assert diff <= TOLERANCE


def test_name_mapping():
  from vision_models.convert import convnext, mixer, timm_vit
  assert timm_vit.registry_name('vit_base_patch16_384.augreg_in21k_ft_in1k') == 'vit_b16'
  assert timm_vit.registry_name('vit_huge_patch14_224') == 'vit_h14'
  assert timm_vit.registry_name('deit_small_patch16_224') == 'vit_s16'
  assert timm_vit.registry_name('deit_base_distilled_patch16_384') == 'deit_b16_distilled'
  assert timm_vit.registry_name('deit3_huge_patch14_224.fb_in22k_ft_in1k') == 'deit3_h14'
  assert timm_vit.registry_name('deit3_medium_patch16_224') == 'vit'  # no registered DeiT III medium
  assert convnext.registry_name('convnext_xlarge.fb_in22k') == 'convnext_xl'
  assert convnext.registry_name('convnextv2_femto.fcmae_ft_in1k') == 'convnextv2_f'
  assert convnext.registry_name('convnext_tiny_hnf') == 'convnext'
  assert mixer.registry_name('mixer_b16_224.goog_in21k_ft_in1k') == 'mixer_b16'


def test_every_tensor_used_and_every_parameter_filled():
  model = randomise(timm.create_model('deit3_small_patch16_224', pretrained=False, **VIT_SMALL))
  state = dict(model.state_dict())
  with pytest.raises(ConfigError, match='not used: extra.weight'):
    convert.from_timm('deit3_small_patch16_224', {**state, 'extra.weight': torch.zeros(3)}, num_heads=4)
  del state['blocks.1.ls2.gamma']
  with pytest.raises(ConfigError, match='no tensor .blocks.1.ls2.gamma'):
    convert.from_timm('deit3_small_patch16_224', state, num_heads=4)
  with pytest.raises(ConfigError, match='pass num_heads='):  # a registered size, another width: heads unknown
    convert.from_timm('deit3_small_patch16_224', state)
  with pytest.raises(ConfigError, match='pass num_heads='):  # no registered size
    convert.from_timm('vit_giant_patch16_gap_224', state)
  with pytest.raises(ConfigError, match='no converter'):
    convert.from_timm('resnet50', state)


@pytest.mark.parametrize('timm_name,family', [('convnext_tiny', 'ConvNeXt'), ('caformer_s18', 'MetaFormer'),
                                              ('inception_next_tiny', 'InceptionNeXt'), ('mixer_b16_224', 'MLP-Mixer')])
def test_wrong_state_dict_is_a_config_error(timm_name, family):
  with pytest.raises(ConfigError, match=f'not an? {family} state dict'):
    convert.from_timm(timm_name, {'foo.weight': torch.zeros(3)})


def test_distributed_data_parallel_prefix_is_stripped():
  state = randomise(timm.create_model('deit3_small_patch16_224', pretrained=False, **VIT_SMALL)).state_dict()
  _, want = convert.from_timm('deit3_small_patch16_224', state, num_heads=4)
  _, got = convert.from_timm('deit3_small_patch16_224', {f'module.{k}': v for k, v in state.items()}, num_heads=4)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), got, want))
