"""MaxViT, Next-ViT and UniRepLKNet take their token mixers from `models/mixers.py`: overrides build, run and train
(finite logits, gradients in the new mixers), the default models keep their parameter counts, bad names are
ConfigErrors naming the choices, and UniRepLKNet's `reparameterize` leaves overridden blocks as they are."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_models import models
from vision_models.errors import ConfigError
from vision_models.models import maxvit, nextvit, unireplknet

FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
IMAGE = 32
MAXVIT = dict(num_classes=4, stem_width=8, dims=(16, 32), depths=(1, 1), head_dim=8, image_size=32,
              partition_ratio=8)  # Window 4 on the 8×8 and 4×4 maps.
NEXTVIT = dict(num_classes=4, depths=(1, 1, 5, 1))  # Widths are fixed by the hybrid layout; 32 px keeps it small.
UNIREPLKNET = dict(num_classes=4, depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), kernel_sizes=((3,), (13,), (7, 3), (7,)),
                   head_dim=16)


def random_variables(model, seed=0):
  """Random values in `init`'s shapes (compiling a real init costs long on a busy CPU); BN variances positive."""
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, IMAGE, IMAGE, 3)))))
  rng = np.random.default_rng(seed)

  def value(path, spec):
    x = rng.normal(0, 0.1, spec.shape).astype(np.float32)
    return np.abs(x) + 0.5 if path[-1].key in ('var', 'scale') else x
  return jax.tree_util.tree_map_with_path(value, shapes)


IMAGES = jax.random.normal(jax.random.key(1), (2, IMAGE, IMAGE, 3))


def logits_and_grads(model, variables):
  x = IMAGES

  def loss(params):
    logits = model.apply({**variables, 'params': params}, x)
    return jnp.sum(logits ** 2), logits
  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True), compiler_options=FAST_COMPILE)(
      variables['params'])
  return logits, grads


def assert_trains(model, mixer_paths):
  """Finite logits, and a gradient in every parameter of each new mixer (`mixer_paths`: module names down to it)."""
  variables = random_variables(model)
  logits, grads = logits_and_grads(model, variables)
  assert logits.shape == (2, 4) and bool(jnp.isfinite(logits).all())
  for names in mixer_paths:
    leaves = jax.tree_util.tree_leaves_with_path(functools.reduce(lambda tree, name: tree[name], names, grads))
    assert leaves, names
    for path, g in leaves:
      assert float(jnp.abs(g).max()) > 0, (names, jax.tree_util.keystr(path))
  return variables, logits


def paths(tree) -> set[str]:
  return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)}


def test_maxvit_overrides():
  overrides = {'0': ('dwconv', 'hyena2d'), '1': ('window_attention_relpos', 'attention')}
  model = maxvit.MaxViT(**MAXVIT, mixer_overrides=overrides,
                        mixer_options={'hyena2d': {'filter_width': 8, 'emb_dim': 5}})
  variables, _ = assert_trains(model, [('stages_0_blocks_0', 'attn_block', 'mixer'),
                                       ('stages_0_blocks_0', 'attn_grid', 'mixer'),
                                       ('stages_1_blocks_0', 'attn_grid', 'mixer')])
  params = variables['params']
  assert set(params['stages_0_blocks_0']['attn_block']['mixer']) == {'kernel', 'bias'}  # dwconv
  # Block 1's block attention is the default mixer: its parameters in timm's place, as in the default model.
  default = random_variables(maxvit.MaxViT(**MAXVIT))['params']
  assert 'relative_position_bias_table' in params['stages_1_blocks_0']['attn_block']
  assert paths(default['stages_1_blocks_0']['attn_block']) == paths(params['stages_1_blocks_0']['attn_block'])
  assert paths(default['stages_1_blocks_0']['conv']) == paths(params['stages_1_blocks_0']['conv'])


def test_maxvit_mixer_shape_errors():
  with pytest.raises(ConfigError, match='one mixer name or 2'):
    random_variables(maxvit.MaxViT(**MAXVIT, mixer_overrides={'0': ('dwconv',)}))


def test_nextvit_overrides():
  # Block 0: NCB; 1: the NTB of stage 2; 2-5: NCBs of stage 3, 6 its NTB; 7: the NTB of stage 4.
  overrides = {'0': 'dwconv', '1': ('attention', 'sepconv'), '2:4': 'window_attention', '7': ('e_mhsa', 'gated_conv')}
  model = nextvit.NextViT(**NEXTVIT, mixer_overrides=overrides, mixer_options={'window': 2})
  variables, _ = assert_trains(model, [('stages_0_blocks_0', 'mixer'), ('stages_1_blocks_0', 'mixer'),
                                       ('stages_1_blocks_0', 'mixer_conv'), ('stages_2_blocks_0', 'mixer'),
                                       ('stages_3_blocks_0', 'mixer_conv')])
  params = variables['params']
  assert 'e_mhsa' in params['stages_3_blocks_0'] and 'mhca' in params['stages_2_blocks_2']  # Defaults stay.
  assert 'mhca' not in params['stages_0_blocks_0'] and 'e_mhsa' not in params['stages_1_blocks_0']


def test_nextvit_mixer_shape_errors():
  with pytest.raises(ConfigError, match=r'block 0 \(ncb\)'):
    nextvit.NextViT(**NEXTVIT, mixer_overrides={'0': ('dwconv', 'mhca')}).block_mixers()


def test_unireplknet_overrides_and_reparameterize():
  overrides = {'1': 'attention', '2': 'gated_conv'}
  model = unireplknet.UniRepLKNet(**UNIREPLKNET, mixer_overrides=overrides)
  variables, logits = assert_trains(model, [('stages_1_0', 'mixer'), ('stages_2_0', 'mixer')])
  assert 'dwconv' in variables['params']['stages_2_1'] and 'mixer' not in variables['params']['stages_2_1']
  deploy, deploy_variables = unireplknet.reparameterize(model, variables)
  assert set(deploy_variables['batch_stats']) == {'stages_1_0', 'stages_2_0'}  # Overridden blocks: as they were.
  assert 'bias' in deploy_variables['params']['stages_2_1']['dwconv']  # Folded.
  assert 'pwconv2_bn' in deploy_variables['params']['stages_1_0']
  got = jax.jit(lambda v: deploy.apply(v, IMAGES), compiler_options=FAST_COMPILE)(deploy_variables)
  np.testing.assert_allclose(np.asarray(got), np.asarray(logits), atol=1e-5)


@pytest.mark.parametrize('name,count', [('maxvit_t', 30_916_528), ('nextvit_small', 31_763_368),
                                        ('unireplknet_a', 4_649_060)])
def test_default_parameter_counts_unchanged(name, count):
  variables = jax.eval_shape(lambda: models.create(name).init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  assert models.param_count(nn.unbox(variables['params'])) == count


@pytest.mark.parametrize('model', [maxvit.MaxViT(**MAXVIT, mixer_overrides={'1:': 'no_such_mixer'}),
                                   nextvit.NextViT(**NEXTVIT, mixer_overrides={'-1': 'no_such_mixer'}),
                                   unireplknet.UniRepLKNet(**UNIREPLKNET, mixer='no_such_mixer')])
def test_unknown_mixer_names_the_choices(model):
  with pytest.raises(ConfigError, match=r"unknown token mixer 'no_such_mixer'; choose one of .*dilated_reparam.*"
                                        r"grid_attention_relpos.*mhca"):
    random_variables(model)


def test_options_no_mixer_takes_are_rejected():
  with pytest.raises(ConfigError, match="'sr_ratio' is taken by none"):
    random_variables(unireplknet.UniRepLKNet(**UNIREPLKNET, mixer_options={'sr_ratio': 2}))
