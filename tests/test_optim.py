"""Optimizers, schedules, weight-decay masks, layer-wise lr decay and the weight EMA."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

from vision_models import models, parallel
from vision_models.errors import ConfigError
from vision_models.training import optim, state as state_lib


def cfg(**kwargs):
  return ml_collections.ConfigDict({'learning_rate': 1.0, 'warmup_steps': 10, **kwargs})


def vit_params():
  model = models.create('vit_ti16', depth=3, num_classes=10)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  return model, jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), nn.unbox(variables['params']))


def synthetic(names):
  """A params tree with one kernel per top-level name."""
  return {n: {'kernel': jnp.ones((2, 2))} for n in names}


def small_vit_like():
  """A few ViT-named leaves (fast to step eagerly), one large enough for Adafactor to factor."""
  return {'patch_embed': {'kernel': jnp.ones((4, 4, 3, 8)), 'bias': jnp.ones(8)}, 'pos_embed': jnp.ones((1, 5, 8)),
          'blocks_0': {'mlp': {'fc1': {'kernel': jnp.ones((8, 16))}}, 'norm1': {'scale': jnp.ones(8)}},
          'blocks_1': {'attn': {'query_kernel': jnp.ones((8, 2, 4)), 'query_bias': jnp.ones((2, 4))}},
          'blocks_2': {'mlp': {'fc2': {'kernel': jnp.ones((256, 128))}}},
          'norm': {'scale': jnp.ones(8)}, 'head': {'kernel': jnp.ones((8, 3)), 'bias': jnp.ones(3)}}


@pytest.mark.parametrize('name,values', [
    ('cosine', {0: 0.0, 5: 0.5, 10: 1.0, 60: 0.55, 110: 0.1}),
    ('linear', {0: 0.0, 5: 0.5, 10: 1.0, 60: 0.55, 110: 0.1}),
    ('constant', {0: 0.0, 5: 0.5, 10: 1.0, 60: 1.0, 110: 1.0}),
])
def test_schedule_values_at_key_steps(name, values):
  lr = optim.schedule(cfg(schedule=name, end_lr=0.1), total_steps=110)
  for step, want in values.items():
    np.testing.assert_allclose(float(lr(step)), want, atol=1e-6, err_msg=f'{name} step {step}')
  np.testing.assert_allclose(float(optim.schedule(cfg(schedule='cosine'), 110)(35)),
                             0.5 * (1 + np.cos(np.pi * 25 / 100)), atol=1e-6)
  with pytest.raises(ConfigError, match="unknown config.optimizer.schedule 'step'"):
    optim.schedule(cfg(schedule='step'), 10)


def test_weight_decay_mask_excludes_norms_biases_embeddings_tokens_and_tables():
  _, params = vit_params()
  flat = traverse_util.flatten_dict(optim.decay_mask(params), sep='/')
  for key in ('blocks_0/attn/query_kernel', 'blocks_0/attn/out_kernel', 'blocks_0/mlp/fc1/kernel', 'head/kernel',
              'patch_embed/kernel'):
    assert flat[key], key
  for key in ('blocks_0/attn/query_bias', 'blocks_0/attn/out_bias', 'blocks_0/norm1/scale', 'blocks_0/norm1/bias',
              'norm/scale', 'pos_embed', 'cls_token', 'head/bias'):
    assert not flat[key], key
  other = {'stages_0_blocks_0': {'attn': {'relative_position_bias_table': jnp.ones((2, 13, 13))},
                                 'ls': {'gamma': jnp.ones(4)}, 'mlp': {'grn': {'weight': jnp.ones(4)}},
                                 'conv_dw': {'kernel': jnp.ones((7, 7, 1, 4))}}}
  flat = traverse_util.flatten_dict(optim.decay_mask(other), sep='/')
  assert flat == {'stages_0_blocks_0/attn/relative_position_bias_table': False, 'stages_0_blocks_0/ls/gamma': False,
                  'stages_0_blocks_0/mlp/grn/weight': False, 'stages_0_blocks_0/conv_dw/kernel': True}


def test_weight_decay_applies_through_the_mask():
  params = small_vit_like()
  tx, _ = optim.make(cfg(name='adamw', weight_decay=0.5, warmup_steps=0, schedule='constant'), 10)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = traverse_util.flatten_dict(optax.apply_updates(params, updates), sep='/')
  for key in ('blocks_0/mlp/fc1/kernel', 'blocks_1/attn/query_kernel', 'head/kernel'):
    np.testing.assert_allclose(new[key], 0.5, err_msg=key)  # 1 − lr·wd
  for key in ('blocks_1/attn/query_bias', 'blocks_0/norm1/scale', 'pos_embed', 'head/bias'):
    np.testing.assert_allclose(new[key], 1.0, err_msg=key)


def test_layer_ids_for_vit_mixer_and_convnext():
  _, params = vit_params()
  ids, n = optim.layer_ids(params)
  assert n == 5 and ids == {'patch_embed': 0, 'cls_token': 0, 'pos_embed': 0, 'blocks_0': 1, 'blocks_1': 2,
                            'blocks_2': 3, 'norm': 4, 'head': 4}
  ids, n = optim.layer_ids(synthetic(['stem', 'blocks_0', 'blocks_7', 'norm', 'head']))
  assert n == 10 and ids == {'stem': 0, 'blocks_0': 1, 'blocks_7': 8, 'norm': 9, 'head': 9}
  depths = (3, 3, 9, 3)  # ConvNeXt-T
  names = ['stem_conv', 'stem_norm', 'head_norm', 'head'] + [f'stages_{s}_blocks_{j}' for s, d in enumerate(depths)
                                                              for j in range(d)]
  names += [f'stages_{s}_downsample_{part}' for s in (1, 2, 3) for part in ('norm', 'conv')]
  ids, n = optim.layer_ids(synthetic(names), 'block')
  assert n == 20
  assert (ids['stem_conv'], ids['stages_0_blocks_2'], ids['stages_1_downsample_conv'], ids['stages_1_blocks_0'],
          ids['stages_2_blocks_8'], ids['stages_3_blocks_2'], ids['head'], ids['head_norm']) == (1, 3, 4, 4, 15, 18,
                                                                                                 19, 19)
  ids, n = optim.layer_ids(synthetic(names), 'group')
  assert n == 14
  assert (ids['stem_norm'], ids['stages_0_blocks_1'], ids['stages_1_downsample_norm'], ids['stages_2_downsample_conv'],
          ids['stages_2_blocks_5'], ids['stages_2_blocks_8'], ids['stages_3_downsample_conv'], ids['head']) == (
              0, 1, 2, 3, 4, 5, 12, 13)
  with pytest.raises(ConfigError, match="layer_decay_scheme 'stage'"):
    optim.layer_ids(params, 'stage')
  with pytest.raises(ConfigError, match='needs a model with `blocks_i`'):
    optim.layer_ids(synthetic(['conv', 'dense']))


def test_layer_decay_scales_each_update_by_its_layer():
  params = small_vit_like()
  decay = 0.5
  tx, _ = optim.make(cfg(name='sgd', momentum=0.0, warmup_steps=0, schedule='constant', layer_decay=decay), 10)
  grads = jax.tree.map(jnp.ones_like, params)
  updates = traverse_util.flatten_dict(tx.update(grads, tx.init(params), params)[0], sep='/')
  expected = {'patch_embed/kernel': decay ** 4, 'pos_embed': decay ** 4, 'blocks_0/mlp/fc1/kernel': decay ** 3,
              'blocks_1/attn/query_bias': decay ** 2, 'blocks_2/mlp/fc2/kernel': decay ** 1, 'norm/scale': 1.0,
              'head/kernel': 1.0}
  for key, scale in expected.items():
    np.testing.assert_allclose(updates[key], -scale, rtol=1e-6, err_msg=key)


@pytest.mark.parametrize('name', ['lamb', 'adafactor', 'adamw', 'sgd'])
def test_optimizers_build_and_step(name):
  params = small_vit_like()
  tx, lr = optim.make(cfg(name=name, weight_decay=0.05, grad_clip=1.0, warmup_steps=1, learning_rate=1e-2), 10)
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape, p.dtype), params)
  step = jax.jit(lambda p, s: tx.update(grads, s, p))
  updates, opt_state = step(params, tx.init(params))
  updates, _ = step(optax.apply_updates(params, updates), opt_state)
  norms = jax.tree.map(lambda u: float(jnp.abs(u).max()), updates)
  assert all(np.isfinite(v) and v > 0 for v in jax.tree.leaves(norms))
  with pytest.raises(ConfigError, match="unknown config.optimizer.name 'adam'"):
    optim.make(cfg(name='adam'), 10)


def test_ema_of_weights_tracks_the_parameters_and_shards_like_them():
  params = {'w': jnp.array([1.0, 2.0]), 'b': jnp.array(0.0)}
  tx, _ = optim.make(cfg(name='sgd', momentum=0.0, warmup_steps=0, schedule='constant', ema_decay=0.75), 10)
  opt_state = tx.init(params)
  ema = params
  for grad in (1.0, -2.0, 0.5):
    updates, opt_state = tx.update(jax.tree.map(lambda p: jnp.full_like(p, grad), params), opt_state, params)
    params = optax.apply_updates(params, updates)
    ema = jax.tree.map(lambda e, p: 0.75 * e + 0.25 * p, ema, params)
  chex_close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6)
  jax.tree.map(chex_close, optim.ema_params(opt_state), ema)
  assert optim.ema_params(optim.make(cfg(), 10)[0].init(params)) is None
  with pytest.raises(ConfigError, match='ema_decay=1.5'):
    optim.make(cfg(ema_decay=1.5), 10)

  # The train state's sharding rules place the EMA like the parameters (optax.tree_utils.tree_map_params).
  model, _ = vit_params()
  tx, _ = optim.make(cfg(name='adamw', ema_decay=0.9999, layer_decay=0.75, grad_clip=1.0), 10)
  mesh = parallel.make_mesh({'data': 2, 'fsdp': 4, 'tensor': 1})
  shardings = state_lib.shardings(model, tx, (32, 32, 3), mesh, min_size=1)
  assert optim.ema_params(shardings.opt_state) == shardings.params
