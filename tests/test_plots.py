"""Plots: the PNGs are valid images of the size their layout gives; attention weights are the block's own (they
reproduce its attention output) and each row sums to 1."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vision_models import models, plots


def random_variables(module, images, std=0.2):
  """Normal noise in the shapes of the module's variables (non-zero biases; far cheaper than running init)."""
  rs = np.random.RandomState(0)
  shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), images))
  return jax.tree.map(lambda s: (std * rs.normal(size=s.shape)).astype(np.float32), shapes)


def png_size(path):
  with Image.open(path) as image:
    image.verify()  # A truncated or corrupt PNG raises here.
  with Image.open(path) as image:
    return image.format, image.size


def write_metrics(workdir, records):
  with open(workdir / 'metrics.jsonl', 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)


def test_training_curves_and_command(tmp_path, capsys):
  records = [{'step': s, 'train/loss': 2.0 / s, 'train/accuracy': 1 - 1 / s, 'train/learning_rate': 1e-3 * s / 10}
             for s in range(1, 11)]
  records += [{'step': 5, 'eval/loss': 0.5, 'eval/accuracy': 0.7, 'eval/top5_accuracy': 0.9},
              {'step': 10, 'eval/loss': 0.3, 'eval/accuracy': 0.8, 'eval/top5_accuracy': 0.95}]
  write_metrics(tmp_path, records)
  out = plots.training_curves(str(tmp_path), str(tmp_path / 'plots' / 'c.png'))
  assert png_size(out) == ('PNG', (1500, 400))
  assert plots.main(['curves', '--workdir', str(tmp_path)]) == 0
  assert png_size(tmp_path / 'curves.png') == ('PNG', (1500, 400))
  # A diffusion run logs no accuracy; the figure is still written.
  write_metrics(tmp_path, [{'step': 1, 'train/loss': 0.2, 'train/mse': 0.1, 'train/learning_rate': 1e-4}])
  assert png_size(plots.training_curves(str(tmp_path), str(tmp_path / 'd.png'))) == ('PNG', (1500, 400))
  capsys.readouterr()
  assert plots.main(['curves', '--workdir', str(tmp_path / 'missing')]) == 2
  assert 'no metrics.jsonl' in capsys.readouterr().err


def test_sample_grid_and_command(tmp_path):
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (23, 8, 8, 1)).astype(np.uint8)
  labels = np.arange(23) % 5  # 5 classes, at most 5 images each
  assert png_size(plots.sample_grid(images, labels, str(tmp_path / 'g.png'))) == ('PNG', (500, 500))
  assert png_size(plots.sample_grid(images, labels, str(tmp_path / 'g3.png'), columns=3)) == ('PNG', (300, 500))
  rgb = rng.randint(0, 256, (4, 8, 8, 3)).astype(np.uint8)
  assert png_size(plots.sample_grid(rgb, [0, 0, 1, 1], str(tmp_path / 'rgb.png'))) == ('PNG', (200, 200))
  np.savez(tmp_path / 'samples.npz', images=images, labels=labels)
  assert plots.main(['samples', '--workdir', str(tmp_path)]) == 0
  assert png_size(tmp_path / 'samples_grid.png') == ('PNG', (500, 500))
  with pytest.raises(Exception, match='uint8 NHWC'):
    plots.sample_grid(images.astype(np.float32), labels, str(tmp_path / 'bad.png'))


@pytest.mark.parametrize('pool', ['token', 'gap'])
def test_vit_attention_maps(tmp_path, pool):
  module = models.create('vit', num_classes=4, patch_size=4, width=32, depth=2, num_heads=4, mlp_dim=64, pool=pool)
  images = np.random.RandomState(1).normal(size=(3, 16, 16, 3)).astype(np.float32)
  variables = random_variables(module, images)
  weights = plots.attention_weights(module, variables, images)
  tokens = 16 + (pool == 'token')
  assert weights.shape == (3, 4, tokens, tokens)
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
  # They are the block's weights: applied to its values and output projection they give its attention output.
  _, state = jax.jit(lambda v, x: module.apply(v, x, mutable=['intermediates'], capture_intermediates=lambda m, _:
                                               m.name in ('norm1', 'attn')))(variables, images)
  block = state['intermediates']['blocks_1']
  attn = variables['params']['blocks_1']['attn']
  v = jnp.einsum('btd,dhk->bthk', block['norm1']['__call__'][0], attn['value_kernel']) + attn['value_bias']
  out = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
  out = jnp.einsum('bqhk,hkd->bqd', out, attn['out_kernel']) + attn['out_bias']
  np.testing.assert_allclose(out, block['attn']['__call__'][0], atol=1e-5)

  maps = plots.vit_attention_maps(module, variables, images, str(tmp_path / 'attn.png'))
  assert maps.shape == (3, 4, 4, 4)
  assert png_size(tmp_path / 'attn.png') == ('PNG', (500, 300))  # (1 image + 4 heads) × 3 rows of 100 px
  if pool == 'token':  # The class token's row over the patches: 1 minus what it gives itself.
    np.testing.assert_allclose(maps.sum((-1, -2)) + weights[:, :, 0, 0], 1.0, atol=1e-5)
  else:  # Mean over the queries of rows that sum to 1.
    np.testing.assert_allclose(maps.sum((-1, -2)), 1.0, atol=1e-5)
