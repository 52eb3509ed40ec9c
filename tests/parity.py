"""Helpers for the timm parity tests: random timm weights, and the logits comparison."""
import jax
import numpy as np

from vision_models import convert, models


def randomise(model):
  """Every parameter random (zero-initialised heads and GRN, 1e-6 layer scales too), so each one shows in the
  logits; deterministic."""
  import torch
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(torch.randn(p.shape, generator=gen) * (0.02 if p.ndim > 1 else 0.1) + (
          1.0 if 'norm' in name and name.endswith('weight') else 0.0))
  return model.eval()


def compare(model, timm_name, image_size, **kwargs):
  """Converts `model`, runs both on one batch of 2; returns (our module, max abs logit difference)."""
  import torch
  images = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    expected = model(images).numpy()
  module, variables = convert.from_timm(timm_name, model.state_dict(), **kwargs)
  assert models.param_count(variables['params']) == sum(p.numel() for p in model.parameters())
  got = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, images.numpy().transpose(0, 2, 3, 1))
  assert got.shape == expected.shape
  return module, float(np.abs(np.asarray(got) - expected).max())
