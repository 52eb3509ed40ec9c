"""Parameters trained at one resolution, reshaped for another (evaluation or fine-tuning at 384, timm's and
big_vision's `resample_posemb`): grid position embeddings and relative position tables are interpolated, every other
parameter must keep its shape."""
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vision_models.errors import ConfigError
from vision_models.models import layers

MAX_PREFIX_TOKENS = 2  # class and distillation tokens


def _square_split(rows: int, target_rows: int) -> tuple[int, int, int] | None:
  """(prefix, side, target side) such that both row counts are prefix + side², else None."""
  for prefix in range(MAX_PREFIX_TOKENS + 1):
    side, target = round(np.sqrt(rows - prefix)), round(np.sqrt(max(target_rows - prefix, 0)))
    if side * side == rows - prefix and target * target == target_rows - prefix and side and target:
      return prefix, side, target
  return None


def resize_posemb(posemb: jax.Array, target_rows: int) -> jax.Array:
  """`[1, prefix + h·w, dim]` → `[1, prefix + h'·w', dim]`: prefix rows kept, the square grid resampled
  bilinearly."""
  split = _square_split(posemb.shape[1], target_rows)
  if split is None:
    raise ConfigError(f'cannot resize a position embedding of {posemb.shape[1]} rows to {target_rows}: not a square '
                      f'grid after up to {MAX_PREFIX_TOKENS} prefix tokens')
  prefix, _, side = split
  grid = layers.resample_posemb(posemb[0, prefix:], (side, side))
  return jnp.concatenate([posemb[0, :prefix], grid.astype(posemb.dtype)])[None]


def resize_table(table: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """A relative position bias table `[heads, 2w−1, 2w−1]` resampled to the new window (timm resizes it the same
  way when a model changes resolution)."""
  return jax.image.resize(table, shape, method='bilinear', antialias=False).astype(table.dtype)


RESIZERS = {
    'pos_embed': lambda value, shape: resize_posemb(value, shape[1]),
    'relative_position_bias_table': resize_table,
}


def resize_params(params: Any, target: Any) -> tuple[Any, list[str]]:
  """`params` with every leaf whose shape differs from `target`'s (arrays or ShapeDtypeStructs, same tree) resized
  by `RESIZERS`; returns the new tree and the paths it resized. Any other mismatch is a ConfigError naming it."""
  flat, shapes = traverse_util.flatten_dict(params, sep='/'), traverse_util.flatten_dict(target, sep='/')
  if set(flat) != set(shapes):
    missing, extra = sorted(set(shapes) - set(flat)), sorted(set(flat) - set(shapes))
    raise ConfigError(f'the checkpoint does not fit the model: missing {missing[:5]}, unexpected {extra[:5]}; '
                      'use the config the checkpoint was trained with')
  resized = []
  for path, value in flat.items():
    shape = tuple(shapes[path].shape)
    if tuple(value.shape) == shape:
      continue
    resizer = RESIZERS.get(path.rsplit('/', 1)[-1])
    if resizer is None:
      raise ConfigError(f'parameter {path} has shape {tuple(value.shape)} in the checkpoint but {shape} in the model '
                        'at this resolution, and it cannot be resampled (only position embeddings and relative '
                        'position tables can); evaluate at the training resolution')
    flat[path] = resizer(jnp.asarray(value), shape)
    resized.append(path)
  return traverse_util.unflatten_dict(flat, sep='/'), resized
