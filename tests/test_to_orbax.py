"""`python -m vision_models.convert.to_orbax`: a timm safetensors / .pth file → Orbax checkpoint + model.json, loaded
back and compared with timm's logits; bad input exits with code 2."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from parity import randomise
from vision_models.convert import to_orbax

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')
safetensors_torch = pytest.importorskip('safetensors.torch')


def logits(model, image_size):
  images = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    return images.numpy().transpose(0, 2, 3, 1), model(images).numpy()


def check_roundtrip(out, model, image_size):
  module, variables = to_orbax.load(out)
  images, expected = logits(model, image_size)
  got = jax.jit(lambda v, x: module.apply(v, x))(variables, images)
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4)


def test_safetensors_file_from_the_command_line(tmp_path):
  model = randomise(timm.create_model('convnextv2_atto', pretrained=False, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32),
                                      num_classes=5))
  weights, out = str(tmp_path / 'model.safetensors'), str(tmp_path / 'converted')
  safetensors_torch.save_file(model.state_dict(), weights)
  cwd = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, '-m', 'vision_models.convert.to_orbax', '--timm', 'convnextv2_atto',
                           '--weights', weights, '--out', out], capture_output=True, text=True, cwd=cwd)
  assert result.returncode == 0, result.stderr
  with open(os.path.join(out, 'model.json')) as f:
    spec = json.load(f)
  assert spec['name'] == 'convnextv2_a'
  assert spec['kwargs'] == {'num_classes': 5, 'depths': [1, 1, 1, 1], 'dims': [8, 16, 24, 32]}
  assert spec['image_size'] is None and spec['param_count'] == sum(p.numel() for p in model.parameters())
  check_roundtrip(out, model, 64)


def test_pth_file_with_model_kwargs(tmp_path):
  model = randomise(timm.create_model('deit3_small_patch16_224', pretrained=False, img_size=32, patch_size=8,
                                      embed_dim=64, depth=1, num_heads=4, num_classes=5))
  weights, out = str(tmp_path / 'model.pth'), str(tmp_path / 'converted')
  torch.save({'model': model.state_dict()}, weights)
  assert to_orbax.main(['--timm', 'deit3_small_patch16_224', '--weights', weights, '--out', out,
                        '--model-kwargs', '{"num_heads": 4}']) == 0
  with open(os.path.join(out, 'model.json')) as f:
    spec = json.load(f)
  assert spec['name'] == 'deit3_s16' and spec['image_size'] == 32
  assert spec['kwargs'] == {'num_classes': 5, 'patch_size': 8, 'width': 64, 'depth': 1, 'num_heads': 4,
                            'mlp_dim': 256}
  check_roundtrip(out, model, 32)
  # Bad input: one line on stderr, exit code 2.
  assert to_orbax.main(['--timm', 'deit3_small_patch16_224', '--weights', weights, '--out', out,
                        '--model-kwargs', '{"num_heads": 4}']) == 2  # the checkpoint exists already
  assert to_orbax.main(['--timm', 'convnext_tiny', '--weights', str(tmp_path / 'missing.pth'), '--out', out]) == 2
  assert to_orbax.main(['--timm', 'convnext_tiny', '--weights', weights, '--out', out, '--model-kwargs', '{']) == 2
