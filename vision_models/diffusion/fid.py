"""FID, Inception Score and KID on the FID Inception-v3 (pytorch-fid's port of TF's 2015-12-05 graph), in Flax.

The network is torchvision's Inception-v3 with pytorch-fid's FID patches (`FIDInceptionA/C/E_1`: average pools that
ignore padding; `FIDInceptionE_2`: a max pool) and the 1008-class head. Images are NHWC in [0, 1] (or uint8); like
pytorch-fid it resizes to 299x299 bilinearly (no antialiasing) and maps to [-1, 1]. Weights come from the published
`pt_inception-2015-12-05-6726825d.pth` via `load_inception(path)`; nothing is downloaded. Statistics files are `.npz`
with `mu` and `sigma`, as pytorch-fid and the ADM evaluator's reference batches store them.

    python -m vision_models.diffusion.fid --inception pt_inception-2015-12-05-6726825d.pth \\
        --images DIR/samples.npz --reference VIRTUAL_imagenet256_labeled.npz
"""
import os
from typing import Any, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision_models.errors import ConfigError
from vision_models.models import layers


class BasicConv(nn.Module):
  """Conv (no bias) → BatchNorm (eps 1e-3, running statistics) → ReLU."""
  features: int
  kernel: tuple[int, int] = (1, 1)
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    (ph, pw), s = self.padding, self.stride
    x = nn.Conv(self.features, self.kernel, (s, s), padding=((ph, ph), (pw, pw)), use_bias=False, name='conv',
                kernel_init=layers.with_axes(nn.initializers.lecun_normal(), (None, None, 'conv_in', 'conv_out')))(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn',
                     scale_init=layers.with_axes(nn.initializers.ones, ('conv_out',)),
                     bias_init=layers.with_axes(nn.initializers.zeros, ('conv_out',)))(x)
    return nn.relu(x)


def _avg_pool(x: jax.Array) -> jax.Array:
  # TF's average pool (the FID graph) divides by the number of real pixels at the border.
  return nn.avg_pool(x, (3, 3), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x: jax.Array, stride: int = 1) -> jax.Array:
  return nn.max_pool(x, (3, 3), (stride, stride), padding=((1, 1), (1, 1)) if stride == 1 else 'VALID')


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv(64, name='branch1x1')(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name='branch5x5_2')(BasicConv(48, name='branch5x5_1')(x))
    b3 = BasicConv(64, name='branch3x3dbl_1')(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = BasicConv(self.pool_features, name='branch_pool')(_avg_pool(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv(384, (3, 3), 2, name='branch3x3')(x)
    bd = BasicConv(64, name='branch3x3dbl_1')(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = BasicConv(96, (3, 3), 2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool(x, 2)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
    b1 = BasicConv(192, name='branch1x1')(x)
    b7 = BasicConv(c7, name='branch7x7_1')(x)
    b7 = BasicConv(c7, **row, name='branch7x7_2')(b7)
    b7 = BasicConv(192, **col, name='branch7x7_3')(b7)
    bd = BasicConv(c7, name='branch7x7dbl_1')(x)
    for i, (features, shape) in enumerate([(c7, col), (c7, row), (c7, col), (192, row)], start=2):
      bd = BasicConv(features, **shape, name=f'branch7x7dbl_{i}')(bd)
    bp = BasicConv(192, name='branch_pool')(_avg_pool(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv(320, (3, 3), 2, name='branch3x3_2')(BasicConv(192, name='branch3x3_1')(x))
    b7 = BasicConv(192, name='branch7x7x3_1')(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv(192, (3, 3), 2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)


class InceptionE(nn.Module):
  pool: str  # 'avg' (Mixed_7b) or 'max' (Mixed_7c, a quirk of the TF graph that FID keeps).

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    def split(y, prefix):
      return [BasicConv(384, (1, 3), padding=(0, 1), name=f'{prefix}a')(y),
              BasicConv(384, (3, 1), padding=(1, 0), name=f'{prefix}b')(y)]

    b1 = BasicConv(320, name='branch1x1')(x)
    b3 = split(BasicConv(384, name='branch3x3_1')(x), 'branch3x3_2')
    bd = BasicConv(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(BasicConv(448, name='branch3x3dbl_1')(x))
    bd = split(bd, 'branch3x3dbl_3')
    bp = BasicConv(192, name='branch_pool')(_avg_pool(x) if self.pool == 'avg' else _max_pool(x))
    return jnp.concatenate([b1, *b3, *bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """The FID Inception: images NHWC in [0, 1] (float) or uint8 → `pool` [b, 2048], `logits` and `logits_unbiased`
  [b, 1008] (the original Inception Score code and torch-fidelity use the head without its bias)."""
  resize: bool = True

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    x = images / 255.0 if images.dtype == jnp.uint8 else images.astype(jnp.float32)
    if self.resize:
      x = jax.image.resize(x, (x.shape[0], 299, 299, x.shape[-1]), 'bilinear', antialias=False)
    x = 2.0 * x - 1.0
    x = BasicConv(32, (3, 3), 2, name='Conv2d_1a_3x3')(x)
    x = BasicConv(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = BasicConv(80, name='Conv2d_3b_1x1')(_max_pool(x, 2))
    x = _max_pool(BasicConv(192, (3, 3), name='Conv2d_4a_3x3')(x), 2)
    for name, pool_features in (('5b', 32), ('5c', 64), ('5d', 64)):
      x = InceptionA(pool_features, name=f'Mixed_{name}')(x)
    x = InceptionB(name='Mixed_6a')(x)
    for name, c7 in (('6b', 128), ('6c', 160), ('6d', 160), ('6e', 192)):
      x = InceptionC(c7, name=f'Mixed_{name}')(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = InceptionE('max', name='Mixed_7c')(InceptionE('avg', name='Mixed_7b')(x))
    pool = x.mean(axis=(1, 2))
    unbiased = layers.dense(1008, (None, 'classes'), use_bias=False, name='fc')(pool)
    bias = self.param('fc_bias', layers.with_axes(nn.initializers.zeros, ('classes',)), (1008,))
    return {'pool': pool, 'logits': unbiased + bias, 'logits_unbiased': unbiased}


def load_inception(path: str, resize: bool = True) -> tuple[nn.Module, dict[str, Any]]:
  """`(InceptionV3, variables)` from pytorch-fid's weights: the `.pth` as published (needs torch to read), or the
  same state dict saved as `.safetensors` / `.npz` (no torch needed)."""
  from vision_models.convert.inception import from_pytorch_fid
  if not os.path.exists(path):
    raise ConfigError(f'Inception weights {path!r} not found: download pt_inception-2015-12-05-6726825d.pth (see '
                      'docs/diffusion_eval.md) and pass its path')
  if path.endswith(('.pth', '.pt')):
    try:
      import torch
    except ImportError:
      raise ConfigError(f'reading {path!r} needs PyTorch: pip install torch (or pass the weights as .safetensors / '
                        '.npz)') from None
    state_dict = torch.load(path, map_location='cpu', weights_only=True)
  elif path.endswith('.safetensors'):
    from safetensors.numpy import load_file
    state_dict = load_file(path)
  elif path.endswith('.npz'):
    with np.load(path) as f:
      state_dict = dict(f)
  else:
    raise ConfigError(f'Inception weights {path!r}: expected a .pth, .safetensors or .npz file')
  return from_pytorch_fid(state_dict, resize=resize)


def to_rgb(images: np.ndarray) -> np.ndarray:
  """NHWC images with 3 channels: grayscale repeated, as pytorch-fid's PIL `convert('RGB')` (dit_digits samples are
  grayscale); other channel counts are refused."""
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ConfigError(f'images must be NHWC with 1 (grayscale) or 3 (RGB) channels, got shape {images.shape}')
  return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def inception_outputs(module: nn.Module, variables: Any, images: Iterable[np.ndarray] | np.ndarray,
                      batch_size: int = 100) -> dict[str, np.ndarray]:
  """Runs the network over images (an array or an iterable of batches, NHWC uint8 or [0, 1] float) in batches of
  `batch_size` (the last one padded, so one shape compiles; grayscale made RGB); returns `pool` and
  `logits_unbiased` as numpy."""
  forward = jax.jit(lambda params, x: {k: v for k, v in module.apply(params, x).items() if k != 'logits'})
  batches = images
  if isinstance(images, np.ndarray):
    batches = (images[i:i + batch_size] for i in range(0, len(images), batch_size))
  outputs = []
  for batch in batches:
    batch = to_rgb(np.asarray(batch))
    n = len(batch)
    padded = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)]) if n < batch_size \
        else batch
    outputs.append(jax.tree.map(lambda y: np.asarray(y[:n], np.float64), forward(variables, padded)))
  return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}


def compute_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (unbiased, float64) of `[n, d]` features, as pytorch-fid computes them."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ConfigError(f'statistics need at least 2 feature vectors [n, d], got shape {features.shape}')
  return features.mean(axis=0), np.cov(features, rowvar=False)


def save_statistics(path: str, mu: np.ndarray, sigma: np.ndarray) -> None:
  np.savez(path, mu=mu, sigma=sigma)


def load_statistics(path: str) -> tuple[np.ndarray, np.ndarray]:
  """`(mu, sigma)` from a pytorch-fid / ADM reference `.npz`."""
  if not os.path.exists(path):
    raise ConfigError(f'reference statistics {path!r} not found')
  with np.load(path) as f:
    if 'mu' not in f or 'sigma' not in f:
      raise ConfigError(f'{path!r} has no mu/sigma arrays (it has {", ".join(f.files)}); compute them with '
                        '`python -m vision_models.diffusion.fid --images FILE --save_statistics OUT.npz`')
    return f['mu'].astype(np.float64), f['sigma'].astype(np.float64)


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr (Σ1 Σ2)^½ from the spectrum of a symmetric matrix similar to Σ1 Σ2: Lᵀ Σ2 L with Σ1 = L Lᵀ (Cholesky), or
  Σ1^½ Σ2 Σ1^½ when Σ1 is singular (fewer samples than dimensions). Real and exact where sqrtm needs an eps."""
  try:
    root = np.linalg.cholesky(sigma1)
    eig = np.linalg.eigvalsh(root.T @ sigma2 @ root)
  except np.linalg.LinAlgError:
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root @ sigma2 @ root)
  return float(np.sqrt(np.clip(eig, 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """‖μ1−μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^½ between two Gaussians (float64)."""
  mu1, mu2, sigma1, sigma2 = (np.asarray(a, np.float64) for a in (mu1, mu2, sigma1, sigma2))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ConfigError(f'statistics differ in shape: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}')
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2)
               - 2 * _trace_sqrt_product(sigma1, sigma2))


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
  """Mean and std over `splits` of exp(E_x KL(p(y|x) ‖ p(y))), with the original code's split boundaries."""
  logits = np.asarray(logits, np.float64)
  log_p = logits - logits.max(axis=1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
  n, scores = len(log_p), []
  for i in range(splits):
    part = log_p[i * n // splits:(i + 1) * n // splits]
    top = part.max(axis=0)
    log_py = top + np.log(np.exp(part - top).mean(axis=0))  # log p(y) without underflow to log 0.
    scores.append(np.exp(np.mean(np.sum(np.exp(part) * (part - log_py), axis=1))))
  return float(np.mean(scores)), float(np.std(scores))


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD² with the kernel k(a, b) = (a·b / d + 1)³ (KID, Bińkowski et al. 2018)."""
  d, m = x.shape[1], len(x)
  kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
  off_diagonal = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
  return float(off_diagonal - 2 * kxy.mean())


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
  """KID: mean and std of the unbiased polynomial MMD² over random subsets (without replacement) of each set."""
  x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
  m = min(subset_size, len(x), len(y))
  if m < 2:
    raise ConfigError('KID needs at least 2 feature vectors in each set')
  rng = np.random.default_rng(seed)
  mmd = [_polynomial_mmd2(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)])
         for _ in range(num_subsets)]
  return float(np.mean(mmd)), float(np.std(mmd))


def evaluate(outputs: dict[str, np.ndarray], reference: tuple[np.ndarray, np.ndarray] | None = None,
             splits: int = 10) -> dict[str, float]:
  """Inception Score of `inception_outputs(...)`, and FID when reference `(mu, sigma)` are given."""
  is_mean, is_std = inception_score(outputs['logits_unbiased'], min(splits, len(outputs['pool'])))
  result = {'inception_score': is_mean, 'inception_score_std': is_std}
  if reference is not None:
    result['fid'] = frechet_distance(*compute_statistics(outputs['pool']), *reference)
  return result


def _images_from_npz(path: str) -> np.ndarray:
  if not os.path.exists(path):
    raise ConfigError(f'images file {path!r} not found')
  with np.load(path) as f:
    key = next((k for k in ('images', 'arr_0') if k in f), None)
    if key is None:
      raise ConfigError(f'{path!r} has no `images` (eval.py) or `arr_0` (ADM) array; it has {", ".join(f.files)}')
    return f[key]


def main(argv: list[str] | None = None) -> None:
  import argparse
  import json
  import sys
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--inception', required=True, help='pt_inception-2015-12-05-6726825d.pth (or .safetensors)')
  parser.add_argument('--images', required=True, help='.npz with uint8 NHWC `images` (eval.py) or `arr_0` (ADM)')
  parser.add_argument('--reference', help='.npz with mu/sigma to compute FID against')
  parser.add_argument('--save_statistics', help='write mu/sigma of --images here (a reference for later runs)')
  parser.add_argument('--batch_size', type=int, default=100)
  args = parser.parse_args(argv)
  try:
    module, variables = load_inception(args.inception)
    images = _images_from_npz(args.images)
    reference = load_statistics(args.reference) if args.reference else None
    outputs = inception_outputs(module, variables, images, args.batch_size)
    if args.save_statistics:
      save_statistics(args.save_statistics, *compute_statistics(outputs['pool']))
    print(json.dumps({'num_images': len(images), **evaluate(outputs, reference)}))
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  main()
