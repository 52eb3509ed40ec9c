"""Mixup and CutMix on a batch in JAX, with timm's semantics (`timm.data.Mixup`, mode 'batch').

One λ per batch (per group, see `groups`): each example is mixed with its mirror in the batch (`x[::-1]`). Mixup blends
the images, λ·x + (1−λ)·x[::-1]; CutMix pastes a box of the mirror whose side is √(1−λ) of the image's, centred
uniformly and clipped at the borders, and then λ is corrected to the area actually kept. Targets are the
label-smoothed one-hots mixed with the same λ.
"""
import functools

import jax
import jax.numpy as jnp


def _mix_group(rng: jax.Array, images: jax.Array, targets: jax.Array, mixup_alpha, cutmix_alpha, switch_prob,
               prob) -> tuple[jax.Array, jax.Array]:
  k_apply, k_switch, k_lam, k_y, k_x = jax.random.split(rng, 5)
  use_cutmix = jnp.where((mixup_alpha > 0) & (cutmix_alpha > 0), jax.random.uniform(k_switch) < switch_prob,
                         cutmix_alpha > 0)
  alpha = jnp.where(use_cutmix, cutmix_alpha, mixup_alpha)
  apply = (alpha > 0) & (jax.random.uniform(k_apply) < prob)
  safe_alpha = jnp.where(alpha > 0, alpha, 1.0)
  lam = jnp.where(apply, jax.random.beta(k_lam, safe_alpha, safe_alpha), 1.0)

  height, width = images.shape[1:3]
  ratio = jnp.sqrt(1.0 - lam)
  cut_h, cut_w = (height * ratio).astype(jnp.int32), (width * ratio).astype(jnp.int32)
  cy, cx = jax.random.randint(k_y, (), 0, height), jax.random.randint(k_x, (), 0, width)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + (cut_h + 1) // 2, 0, height)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + (cut_w + 1) // 2, 0, width)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)

  mirror = images[::-1]
  cut = jnp.where(box[None, :, :, None], mirror, images)
  blend = lam.astype(images.dtype) * images + (1 - lam).astype(images.dtype) * mirror
  images = jnp.where(use_cutmix, cut, blend)
  lam = jnp.where(use_cutmix, 1.0 - (y1 - y0) * (x1 - x0) / (height * width), lam)
  return images, lam * targets + (1.0 - lam) * targets[::-1]


def mixup_cutmix(rng: jax.Array, images: jax.Array, labels_onehot: jax.Array, mixup_alpha: float = 0.8,
                 cutmix_alpha: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.1, *,
                 prob: float = 1.0, groups: int = 1) -> tuple[jax.Array, jax.Array]:
  """Mixed NHWC `images` and soft targets `[batch, classes]` (float32, rows sum to 1 for one-hot rows).

  With probability `prob` the batch is mixed: CutMix with probability `switch_prob` when both alphas are positive,
  else whichever is positive; λ ~ Beta(α, α). Alphas of 0 turn a method off; both 0 only smooths the labels.
  `labels_onehot` may already be soft. `groups=g` mixes each of g contiguous slices of the batch on its own (own λ,
  own partners): with g = the number of data-parallel devices, each device mixes its own shard as in timm's DDP
  training, and no example crosses a device. Jit-compatible: every argument but `groups` may be traced.
  """
  batch, classes = labels_onehot.shape
  if batch % groups:
    raise ValueError(f'mixup_cutmix: batch {batch} is not divisible by groups={groups}')
  targets = labels_onehot.astype(jnp.float32) * (1.0 - label_smoothing) + label_smoothing / classes
  split = lambda x: x.reshape(groups, batch // groups, *x.shape[1:])
  mix = jax.vmap(functools.partial(_mix_group, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                                   switch_prob=switch_prob, prob=prob))
  images, targets = mix(jax.random.split(rng, groups), split(images), split(targets))
  return images.reshape(batch, *images.shape[2:]), targets.reshape(batch, classes)
