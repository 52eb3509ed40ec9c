"""Grafting: the report of a toy edit, exact reproduction without edits, distillation of new token mixers (ViT
attention → hyena2d in every block), a DiT edit, and `config.init_from` in the trainer (configs/dit_digits_graft.py)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from vision_models import models
from vision_models.errors import ConfigError
from vision_models.training import graft

IMAGES = (jax.random.normal(jax.random.key(1), (4, 16, 16, 3)),)
ATTN = ('query_kernel', 'query_bias', 'key_kernel', 'key_bias', 'value_kernel', 'value_bias', 'out_kernel', 'out_bias')


def vit(**kwargs):
  return models.create('vit', **{**dict(num_classes=5, patch_size=4, width=16, depth=2, num_heads=2, mlp_dim=32,
                                        pool='gap'), **kwargs})


def init(model, inputs=IMAGES):
  return nn.unbox(jax.jit(lambda r: model.init(r, *inputs, train=False))(jax.random.key(0)))


def apply(model, variables, inputs):
  return jax.jit(lambda v: model.apply(v, *inputs))(variables)


def test_report_of_a_toy_edit():
  old = init(vit())
  new_model = vit(mixer='hyena2d', num_classes=7)
  variables, report = graft.graft(old, new_model, IMAGES, jax.random.key(3))
  attn = [f'params/blocks_{i}/attn/{n}' for i in range(2) for n in ATTN]
  assert sorted(report.replaced) == sorted(attn + ['params/head/kernel', 'params/head/bias'])
  created = traverse_util.flatten_dict(variables, sep='/')
  mixer = [p for p in created if '/mixer/' in p]
  assert mixer and all(p.startswith(('params/blocks_0/mixer/', 'params/blocks_1/mixer/')) for p in mixer)
  assert sorted(report.created) == sorted(mixer + ['params/head/kernel', 'params/head/bias'])
  assert sorted(report.loaded + report.created) == sorted(created)
  old_flat = traverse_util.flatten_dict(old, sep='/')
  for path in report.loaded:  # Copied values, not fresh ones.
    np.testing.assert_array_equal(traverse_util.flatten_dict(variables, sep='/')[path], old_flat[path])
  counts = report.counts()
  assert counts['loaded'][1] + counts['created'][1] == models.param_count(created)
  assert counts['loaded'][1] + counts['replaced'][1] == models.param_count(old_flat)
  assert counts['replaced'][0] == 18
  assert counts['created'][1] == models.param_count({p: created[p] for p in mixer}) + 16 * 7 + 7  # + the new head.
  text = str(report)
  assert 'replaced: params/blocks_{0,1}/attn/query_kernel' in text and 'loaded' in text


def test_no_edit_reproduces_the_old_model_exactly():
  model = vit()
  old = init(model)
  variables, report = graft.graft(old, model, IMAGES, jax.random.key(7))
  assert not report.replaced and not report.created
  np.testing.assert_array_equal(apply(model, variables, IMAGES), apply(model, old, IMAGES))
  dit = models.create('dit', input_size=8, in_channels=1, patch_size=2, hidden_size=16, depth=2, num_heads=2,
                      num_classes=3)
  inputs = (jnp.ones((2, 8, 8, 1)), jnp.array([10.0, 900.0]), jnp.array([0, 2]))
  old = jax.tree.map(lambda x: x + 0.01, init(dit, inputs))  # Non-zero adaLN, so the output depends on everything.
  variables, report = graft.graft(old, dit, inputs, jax.random.key(7))
  assert not report.created and 'constants/pos_embed' in report.loaded
  np.testing.assert_array_equal(apply(dit, variables, inputs), apply(dit, old, inputs))


def test_distillation_fits_only_the_new_mixers_to_the_old_block_outputs():
  old_model, new_model = vit(depth=1), vit(depth=1, mixer='hyena2d')
  old = init(old_model)
  images = (jax.random.normal(jax.random.key(5), (8, 16, 16, 3)),)
  start, _ = graft.graft(old, new_model, images, jax.random.key(3))
  fitted, report = graft.graft(old, new_model, images, jax.random.key(3), distill=30, old_module=old_model,
                               learning_rate=1e-2)
  before, after = report.distill_mse
  assert after < 0.7 * before, report.distill_mse
  outputs = lambda model, v: jax.jit(lambda v: graft.block_outputs(model, v, images, {'train': False}))(v)
  mse = lambda v: float(np.mean((outputs(new_model, v)['blocks_0'] - outputs(old_model, old)['blocks_0']) ** 2))
  assert mse(fitted) == pytest.approx(after, rel=1e-4) and mse(start) == pytest.approx(before, rel=1e-4)
  flat_start, flat_fit = (traverse_util.flatten_dict(v, sep='/') for v in (start, fitted))
  moved = {p for p in flat_start if not np.array_equal(flat_start[p], flat_fit[p])}
  assert moved and moved <= set(report.created)  # Only the new parameters are fitted.
  with pytest.raises(ConfigError, match='old_module'):
    graft.graft(old, new_model, images, jax.random.key(3), distill=1)


def test_dit_qk_norm_edit():
  inputs = (jnp.ones((2, 8, 8, 1)), jnp.array([10.0, 900.0]), jnp.array([0, 2]))
  kwargs = dict(input_size=8, in_channels=1, patch_size=2, hidden_size=16, depth=2, num_heads=2, num_classes=3)
  old = init(models.create('dit', **kwargs), inputs)
  _, report = graft.graft(old, models.create('dit', qk_norm='rmsnorm', **kwargs), inputs, jax.random.key(0))
  assert not report.replaced
  assert sorted(report.created) == [f'params/blocks_{i}/mixer/{q}_norm/scale' for i in range(2) for q in 'kq']
