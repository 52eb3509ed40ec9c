"""Helpers for the timm parity tests: random timm weights, and the logits comparison."""
import jax
import numpy as np

from vision_models import convert, models

# Max abs logit difference over the logits' spread. Correct conversions measure <= 4e-7 in float32 with `randomise`'s
# weights; tanh for exact GELU measures >= 2.8e-5, a kernel with H and W swapped >= 0.1.
TOLERANCE = 1e-5


def randomise(model):
  """Every parameter random (zero-initialised heads and GRN, 1e-6 layer scales too), so each one shows in the
  logits; deterministic. Kernels get std 1/sqrt(fan_in) and scales 1 + noise, so activations stay O(1) through the
  network and a small conversion error (tanh for exact GELU, a transposed kernel) changes the logits by far more than
  float32 rounding does."""
  import torch
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim > 1 and name.endswith('weight'):  # Linear (out, in), conv (out, in / groups, kh, kw)
        p.copy_(noise * p[0].numel() ** -0.5)
      elif p.ndim > 1:  # tokens, position embeddings, relative position tables
        p.copy_(noise)
      elif name.endswith(('weight', 'gamma', 'scale')):  # norm, layer and residual scales
        p.copy_(1.0 + 0.2 * noise)
      else:
        p.copy_(0.1 * noise)
  return model.eval()


def relative_diff(got, expected) -> float:
  """Max abs difference over the spread (max - min) of the expected logits."""
  expected = np.asarray(expected)
  return float(np.abs(np.asarray(got) - expected).max() / np.ptp(expected))


def compare(model, timm_name, image_size, **kwargs):
  """Converts `model`, runs both on one batch of 2; returns (our module, max abs logit difference relative to the
  spread of timm's logits)."""
  import torch
  images = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    expected = model(images).numpy()
  module, variables = convert.from_timm(timm_name, model.state_dict(), **kwargs)
  assert models.param_count(variables['params']) == sum(p.numel() for p in model.parameters())
  got = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, images.numpy().transpose(0, 2, 3, 1))
  assert got.shape == expected.shape
  return module, relative_diff(got, expected)
