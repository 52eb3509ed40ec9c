"""The seed papers' models against timm: MetaFormer baselines (PoolFormer v1/v2, ConvFormer, CAFormer) and
InceptionNeXt. Every registered variant has timm's parameter count; random timm weights converted with `from_timm`
give timm's logits (max abs difference ≤ 1e-5 of their spread, float32, eval mode) for full-size small variants and
reduced layouts; mixers can be swapped per block; the recipe configs build."""
import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parity import TOLERANCE, compare, randomise
from vision_models import models
from vision_models.convert.variants import closest_name
from vision_models.data import preprocess
from vision_models.errors import ConfigError

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

# sum(p.numel() for p in timm.create_model(timm_name).parameters()) for every variant (timm 1.0.31, meta device).
COUNTS = {  # our name: (timm name, parameters)
    'poolformer_s12': ('poolformer_s12', 11_915_176), 'poolformer_s24': ('poolformer_s24', 21_388_968),
    'poolformer_s36': ('poolformer_s36', 30_862_760), 'poolformer_m36': ('poolformer_m36', 56_172_520),
    'poolformer_m48': ('poolformer_m48', 73_473_448),
    'poolformerv2_s12': ('poolformerv2_s12', 11_891_712), 'poolformerv2_s24': ('poolformerv2_s24', 21_341_464),
    'poolformerv2_s36': ('poolformerv2_s36', 30_791_216), 'poolformerv2_m36': ('poolformerv2_m36', 56_077_168),
    'poolformerv2_m48': ('poolformerv2_m48', 73_346_056),
    'convformer_s18': ('convformer_s18', 26_774_448), 'convformer_s36': ('convformer_s36', 40_012_152),
    'convformer_m36': ('convformer_m36', 57_051_640), 'convformer_b36': ('convformer_b36', 99_882_616),
    'caformer_s18': ('caformer_s18', 26_341_656), 'caformer_s36': ('caformer_s36', 39_297_102),
    'caformer_m36': ('caformer_m36', 56_204_878), 'caformer_b36': ('caformer_b36', 98_753_614),
    'inception_next_a': ('inception_next_atto', 4_156_520), 'inception_next_t': ('inception_next_tiny', 28_055_680),
    'inception_next_s': ('inception_next_small', 49_374_016), 'inception_next_b': ('inception_next_base', 86_672_136),
}
FAMILIES = ('poolformer_', 'poolformerv2_', 'convformer_', 'caformer_', 'inception_next_')
REDUCED = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 96), num_classes=10)


def random_timm(name: str, **kwargs):
  """A timm model (a registered name, or a `timm.models.metaformer` layout of LAYOUTS) with random parameters and
  BatchNorm statistics, built on the meta device (skips timm's slow init)."""
  with torch.device('meta'):
    model = LAYOUTS[name](**kwargs) if name in LAYOUTS else timm.create_model(name, pretrained=False, **kwargs)
  model = randomise(model.to_empty(device='cpu'))
  gen = torch.Generator().manual_seed(2)
  for key, buffer in model.named_buffers():
    if key.endswith('running_mean'):
      buffer.copy_(torch.randn(buffer.shape, generator=gen) * 0.1)
    elif key.endswith('running_var'):
      buffer.copy_(torch.rand(buffer.shape, generator=gen) + 0.5)
    else:
      buffer.zero_()
  return model


def metaformer_layout(**layout):
  from timm.models import metaformer as timm_metaformer
  return lambda **kwargs: timm_metaformer.MetaFormer(**layout, **kwargs)


def _layouts():
  from timm.models import metaformer as m
  ln2d, ln = m.LayerNorm2dNoBias, m.LayerNormNoBias
  return {  # timm's registered variants, minus depths / dims
      'poolformerv2': metaformer_layout(norm_layers=m.GroupNorm1NoBias, use_mlp_head=False),
      'convformer': metaformer_layout(token_mixers=m.SepConv, norm_layers=ln2d),
      'caformer': metaformer_layout(token_mixers=[m.SepConv] * 2 + [m.Attention] * 2, norm_layers=[ln2d] * 2 + [ln] * 2),
  }


LAYOUTS = _layouts()


def shapes(module: nn.Module, image_size: int = 32):
  return nn.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))))


def random_variables(module: nn.Module):
  """Random parameters of the right shapes without running the (slow to compile) initialisers; variances of 1."""
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map_with_path(
      lambda path, s: np.ones(s.shape, s.dtype) if 'var' in jax.tree_util.keystr(path) else
      rng.normal(0, 0.1, s.shape).astype(s.dtype), shapes(module))


def test_every_variant_has_timms_parameter_count():
  ours = sorted(n for n in models.names() if n.startswith(FAMILIES))
  assert ours == sorted(COUNTS)
  got = {name: models.param_count(shapes(models.create(name))['params']) for name in ours}
  assert got == {name: n for name, (_, n) in COUNTS.items()}


@pytest.mark.parametrize('timm_name', ['poolformer_s12', 'caformer_s18', 'inception_next_atto'])
def test_full_size_variants_match_timm(timm_name):
  model = random_timm(timm_name)
  module, diff = compare(model, timm_name, 64)
  ours = next(n for n, (t, _) in COUNTS.items() if t == timm_name)
  assert closest_name(module) == (ours, {})  # Default construction is timm's: no field differs.
  assert diff <= TOLERANCE


@pytest.mark.parametrize('layout,timm_name,kwargs,ours', [
    ('poolformerv2', 'poolformerv2_s12', REDUCED, {}),
    # ConvFormer with layer scales everywhere, residual scales in other stages than timm's, and the shift depthwise conv.
    ('convformer', 'convformer_s18', dict(REDUCED, res_scale_init_values=(None, 1.0, None, 1.0),
                                          layer_scale_init_values=1e-6), dict(mixer_options={'conv_impl': 'shift'})),
    ('inception_next_tiny', 'inception_next_tiny', dict(REDUCED, dims=(32, 48, 64, 96)), {}),
], ids=['poolformerv2', 'convformer_scales_shift', 'inception_next_tiny'])
def test_reduced_layouts_match_timm(layout, timm_name, kwargs, ours):
  _, diff = compare(random_timm(layout, **kwargs), timm_name, 64, **ours)
  assert diff <= TOLERANCE


def test_name_mapping():
  from vision_models.convert import inception_next, metaformer as convert_metaformer
  assert convert_metaformer.registry_name('caformer_b36.sail_in22k_ft_in1k_384') == 'caformer_b36'
  assert convert_metaformer.registry_name('poolformerv2_m48.sail_in1k') == 'poolformerv2_m48'
  assert convert_metaformer.registry_name('poolformer_s12') == 'poolformer_s12'
  assert inception_next.registry_name('inception_next_base.sail_in1k_384') == 'inception_next_b'
  assert inception_next.registry_name('inception_next_atto') == 'inception_next_a'


def test_mixer_overrides_place_any_mixer_in_any_block():
  small = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 96), num_classes=5)
  # A ConvFormer whose last two blocks are overridden to attention is CAFormer: same parameters, same computation.
  caformer = models.create('caformer_s18', **small)
  overridden = models.create('convformer_s18', mixer_overrides={'2:4': 'metaformer_attention'}, **small)
  variables = random_variables(caformer)
  assert jax.tree.map(jnp.shape, shapes(overridden)) == jax.tree.map(jnp.shape, variables)
  x = jnp.ones((1, 32, 32, 3))
  assert str(jax.make_jaxpr(overridden.apply)(variables, x)) == str(jax.make_jaxpr(caformer.apply)(variables, x))
  # mixer_options reach the mixers.
  params = shapes(models.create('convformer_s18', mixer_options={'kernel_size': 5}, **small))['params']
  assert params['stages_0_blocks_0']['token_mixer']['dwconv']['kernel'].shape == (5, 5, 1, 32)
  # Mixers cross families: InceptionNeXt's in a PoolFormer; the MetaFormer's and the generic attention in an
  # InceptionNeXt.
  params = shapes(models.create('poolformerv2_s12', mixer_overrides={'1': 'inception_dwconv'}, **small))['params']
  assert 'dwconv_hw' in params['stages_1_blocks_0']['token_mixer']
  params = shapes(models.create('inception_next_t', mixer_overrides={'-1': 'metaformer_attention',
                                                                     '0:2': 'attention'}, **small))['params']
  assert 'out_bias' not in params['stages_3_blocks_0']['token_mixer']  # CAFormer's: no biases.
  assert 'out_bias' in params['stages_0_blocks_0']['token_mixer']  # The generic ViT attention.
  assert 'dwconv_hw' in params['stages_2_blocks_0']['token_mixer']
  with pytest.raises(ConfigError, match='overlap'):
    shapes(models.create('caformer_s18', mixer_overrides={'0:2': 'pooling', '1': 'attention'}, **small))
  with pytest.raises(ConfigError, match='unknown token mixer'):
    shapes(models.create('caformer_s18', mixer='nope', **small))


def test_train_mode_features_and_bad_fields():
  module = models.create('inception_next_a', depths=(1, 1, 1, 1), num_classes=3, drop_path=0.1, remat=True)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  logits, updates = jax.eval_shape(lambda v: module.apply(v, x, train=True, mutable=['batch_stats'],
                                                          rngs={'dropout': jax.random.key(2)}), shapes(module))
  assert logits.shape == (2, 3) and logits.dtype == jnp.float32
  assert jax.tree.map(jnp.shape, updates['batch_stats']) == jax.tree.map(jnp.shape, shapes(module)['batch_stats'])
  features = models.create('caformer_s18', depths=(1, 1, 1, 1), num_classes=0)
  assert jax.eval_shape(features.apply, random_variables(features), x).shape == (2, 512)
  with pytest.raises(ConfigError, match='norm'):
    shapes(models.create('poolformer_s12', norm='batch'))
  with pytest.raises(ConfigError, match='res_scale'):
    shapes(models.create('caformer_s18', res_scale=(1.0, 1.0)))


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('name', ['poolformer_s12', 'convformer_s18', 'caformer_s18', 'inception_next_t'])
def test_recipe_configs_build(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
  config = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(config)
  c = config.get_config()
  assert c.model.name in COUNTS
  models.create(c.model.name, **{k: v for k, v in c.model.items() if k != 'name'})  # Every field exists.
  preprocess.parse(c.data.pp_train)
  preprocess.parse(c.data.pp_eval)
  assert 0 < c.optimizer.warmup_steps < c.total_steps and c.eval_every <= c.total_steps
