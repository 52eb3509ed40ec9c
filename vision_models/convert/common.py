"""What every weight converter shares: tensors to numpy, layout transposes, and the bookkeeping that proves every
source tensor was used and every parameter filled (else a clear error)."""
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vision_models.errors import ConfigError


def to_numpy(tensor: Any) -> np.ndarray:
  """numpy array from a numpy array or a torch tensor (without importing torch)."""
  if hasattr(tensor, 'detach'):
    tensor = tensor.detach().cpu()
    if str(tensor.dtype) == 'torch.bfloat16':
      tensor = tensor.float()
    tensor = tensor.numpy()
  return np.asarray(tensor)


def linear(w: np.ndarray) -> np.ndarray:
  """torch Linear weight (out, in) → Flax Dense kernel (in, out)."""
  return w.T


def conv(w: np.ndarray) -> np.ndarray:
  """torch Conv2d weight OIHW → Flax HWIO (depthwise (C, 1, kh, kw) → (kh, kw, 1, C))."""
  return w.transpose(2, 3, 1, 0)


class StateDict:
  """A source state dict that remembers which tensors were read, so unused ones can be reported."""

  def __init__(self, state_dict: Mapping[str, Any], source: str):
    self.tensors = {k: v for k, v in state_dict.items()}
    if self.tensors and all(k.startswith('module.') for k in self.tensors):  # saved from a DistributedDataParallel
      self.tensors = {k[len('module.'):]: v for k, v in self.tensors.items()}
    self.source = source
    self.used: set[str] = set()

  def __contains__(self, key: str) -> bool:
    return key in self.tensors

  def __getitem__(self, key: str) -> np.ndarray:
    if key not in self.tensors:
      raise ConfigError(f'{self.source}: the state dict has no tensor {key!r} (is it the right model name?)')
    self.used.add(key)
    return to_numpy(self.tensors[key]).astype(np.float32)

  def skip(self, *keys: str) -> None:
    """Marks tensors that are deliberately not converted (e.g. BatchNorm's num_batches_tracked)."""
    self.used.update(k for k in keys if k in self.tensors)

  def check_all_used(self) -> None:
    unused = sorted(set(self.tensors) - self.used)
    if unused:
      shown = ', '.join(unused[:8]) + (f' and {len(unused) - 8} more' if len(unused) > 8 else '')
      raise ConfigError(f'{self.source}: {len(unused)} tensors of the state dict were not used: {shown} '
                        '(does the model name match the checkpoint?)')


def fill(model: nn.Module, sample_input: jax.Array | tuple, converted: Mapping[str, Any],
         source: str) -> dict[str, Any]:
  """Checks `converted` (flat `{'params/a/b/kernel': array, 'batch_stats/...': ...}` or nested) against the
  variables `model.init` would create: same keys, same shapes. Returns the nested variables as jnp arrays."""
  inputs = sample_input if isinstance(sample_input, tuple) else (sample_input,)
  target = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), *inputs, train=False)))
  want = traverse_util.flatten_dict(target, sep='/')
  have = converted if all(isinstance(k, str) and '/' in k for k in converted) else traverse_util.flatten_dict(
      dict(converted), sep='/')
  missing = sorted(set(want) - set(have))
  extra = sorted(set(have) - set(want))
  if missing or extra:
    raise ConfigError(f'{source}: converted variables do not match the model: missing {missing[:6]}, '
                      f'unexpected {extra[:6]}')
  for key, spec in want.items():
    if tuple(have[key].shape) != tuple(spec.shape):
      raise ConfigError(f'{source}: parameter {key} has shape {tuple(have[key].shape)} in the checkpoint but the '
                        f'model wants {tuple(spec.shape)}')
  return traverse_util.unflatten_dict({k: jnp.asarray(have[k], want[k].dtype) for k in want}, sep='/')


Converter = Callable[[str, Mapping[str, Any]], tuple[nn.Module, dict[str, Any]]]
_TIMM: list[tuple[str, Converter]] = []


def register_timm(prefix: str):
  """Registers a converter for timm model names starting with `prefix` (longest prefix wins)."""
  def add(fn: Converter) -> Converter:
    _TIMM.append((prefix, fn))
    return fn
  return add


def from_timm(timm_name: str, state_dict: Mapping[str, Any], **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
  """`(module, variables)` from a timm model name and its state dict (numpy arrays or torch tensors), ready for
  `module.apply(variables, images_nhwc, train=False)`. `kwargs` are model fields the state dict cannot tell (e.g. a
  custom ViT's `num_heads`), for converters that take them."""
  matches = [(p, fn) for p, fn in _TIMM if timm_name.startswith(p)]
  if not matches:
    raise ConfigError(f'no converter for timm model {timm_name!r}; supported prefixes: '
                      f'{", ".join(sorted(p for p, _ in _TIMM))}')
  return max(matches, key=lambda m: len(m[0]))[1](timm_name, state_dict, **kwargs)
