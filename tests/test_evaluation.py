"""Evaluation at another resolution (position embeddings resampled, preprocessing rescaled) and of an exported
checkpoint (`eval.py --resolution`, `--checkpoint`)."""
import json
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_models import export
from vision_models.errors import ConfigError
from vision_models.models import layers, resize
from vision_models.training import evaluation, trainer


def test_pp_at_resolution_scales_every_size():
  pp = 'decode|resize_small(256)|central_crop(224)|value_range(-1, 1)|keep("image", "label")'
  assert evaluation.pp_at_resolution(pp, 224, 384) == (
      'decode|resize_small(439)|central_crop(384)|value_range(-1, 1)|keep("image", "label")')
  timm = 'decode|resize_center_crop(224, crop_pct=0.875, method="bicubic")|normalize()'
  assert evaluation.pp_at_resolution(timm, 224, 384).startswith('decode|resize_center_crop(384, crop_pct=0.875')


def test_resize_posemb_keeps_prefix_tokens_and_resamples_the_grid():
  posemb = jax.random.normal(jax.random.key(0), (1, 1 + 16, 8))
  out = resize.resize_posemb(posemb, 1 + 36)
  assert out.shape == (1, 37, 8)
  chex.assert_trees_all_equal(out[0, 0], posemb[0, 0])
  chex.assert_trees_all_close(out[0, 1:], layers.resample_posemb(posemb[0, 1:], (6, 6)))
  constant = jnp.ones((1, 16, 4))  # A constant grid stays constant under bilinear resampling.
  chex.assert_trees_all_close(resize.resize_posemb(constant, 64), jnp.ones((1, 64, 4)), atol=1e-6)


def test_resize_params_refuses_what_it_cannot_resample():
  params = {'head': {'kernel': jnp.zeros((8, 10))}, 'pos_embed': jnp.zeros((1, 16, 8))}
  target = {'head': {'kernel': jax.ShapeDtypeStruct((8, 12), jnp.float32)},
            'pos_embed': jax.ShapeDtypeStruct((1, 64, 8), jnp.float32)}
  with pytest.raises(ConfigError, match='head/kernel'):
    resize.resize_params(params, target)
  with pytest.raises(ConfigError, match='missing'):
    resize.resize_params({'pos_embed': params['pos_embed']}, target)
  new, resized = resize.resize_params(params, {**target, 'head': {'kernel': jax.ShapeDtypeStruct((8, 10), 'f4')}})
  assert resized == ['pos_embed'] and new['pos_embed'].shape == (1, 64, 8)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, digits_dir):
  """The tiny quickstart with a class token and a learned position embedding, trained once in a workdir."""
  from configs import quickstart
  c = quickstart.get_config()
  c.data.data_dir = digits_dir
  c.data.shuffle_buffer = 500
  c.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, pool='token', posemb='learn', drop_path=0.0)
  c.batch_size = 64
  c.total_steps = 20
  c.optimizer.update(warmup_steps=5, learning_rate=4e-3)
  c.log_every = c.eval_every = c.checkpoint_every = 20
  workdir = str(tmp_path_factory.mktemp('trained'))
  trainer.train(c, workdir)
  return c, workdir


def test_evaluate_at_another_resolution(trained):
  config, workdir = trained
  results = evaluation.evaluate_workdir(config, workdir, resolution=24)
  assert results['resized'] == ['pos_embed'] and results['resolution'] == 24
  assert results['eval/examples'] == 360 and 0 <= results['eval/accuracy'] <= 1
  with open(os.path.join(workdir, 'eval_24.json')) as f:
    assert json.load(f)['eval/accuracy'] == results['eval/accuracy']
  same = evaluation.evaluate_workdir(config, workdir, resolution=16)  # The training resolution: the plain evaluation.
  assert 'resized' not in same and same['step'] == 20


def test_evaluate_an_exported_checkpoint_gives_the_workdir_figures(trained, tmp_path):
  config, workdir = trained
  expected = trainer.evaluate(config, workdir)
  out = str(tmp_path / 'exported')
  export.export(config, workdir, out)
  results = evaluation.evaluate_checkpoint(config, out, str(tmp_path))
  assert results['resized'] == []
  for key in ('eval/accuracy', 'eval/top5_accuracy', 'eval/examples'):
    assert results[key] == expected[key], key
  np.testing.assert_allclose(results['eval/loss'], expected['eval/loss'], rtol=1e-5)
  at24 = evaluation.evaluate_checkpoint(config, out, str(tmp_path), resolution=24)
  assert at24['resized'] == ['pos_embed'] and os.path.isfile(tmp_path / 'eval_checkpoint.json')


def test_fine_tuning_at_another_resolution_resamples_the_position_embedding():
  """`config.init_from` of a 384 px fine-tune from a 224 px run: the grafted model loads every parameter, the
  position embedding resampled (here 16 px → 24 px, 4×4 → 6×6 patches)."""
  from vision_models import models
  from vision_models.training import graft
  kwargs = dict(num_classes=3, patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32)
  old = models.create('vit', **kwargs).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  new_module = models.create('vit', **kwargs)
  variables, report = graft.graft(old, new_module, (jnp.zeros((1, 24, 24, 3)),), jax.random.key(1))
  assert report.resized == ['params/pos_embed'] and not report.replaced and not report.created
  expected = resize.resize_posemb(nn.unbox(old)['params']['pos_embed'], 37)
  chex.assert_trees_all_close(variables['params']['pos_embed'], expected)
