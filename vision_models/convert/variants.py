"""From a checkpoint's architecture to one of our registered models: the registry name plus only the keyword
arguments in which the checkpoint differs from that variant, then the module and its filled variables."""
import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vision_models import models
from vision_models.convert.common import StateDict, fill
from vision_models.errors import ConfigError

_SKIP = ('parent', 'name')


def fields(module: nn.Module) -> dict[str, Any]:
  """A module's dataclass fields (its constructor arguments)."""
  return {f.name: getattr(module, f.name) for f in dataclasses.fields(module) if f.name not in _SKIP}


def overrides(name: str, derived: dict[str, Any]) -> dict[str, Any]:
  """The entries of `derived` that differ from the defaults of the registered model `name`."""
  defaults = fields(models.create(name))
  unknown = sorted(set(derived) - set(defaults))
  if unknown:
    raise ConfigError(f'model {name!r} has no field(s) {", ".join(unknown)}')
  same = lambda a, b: tuple(a) == tuple(b) if isinstance(a, (list, tuple)) else a == b  # noqa: E731
  return {k: v for k, v in derived.items() if not same(v, defaults[k])}


def closest_name(module: nn.Module) -> tuple[str, dict[str, Any]]:
  """The registered name that rebuilds `module`, and the keyword arguments it needs: `models.create(name, **kwargs)`
  gives a module with the same fields. The module's own name when it is a registered one (converters name the
  module after the variant they chose), else the registered name that needs the fewest arguments."""
  want = fields(module)
  if module.name in models.names() and type(models.create(module.name)) is type(module):
    return module.name, overrides(module.name, want)
  best = None
  for name in models.names():
    try:
      candidate = models.create(name)
    except Exception:  # noqa: BLE001  (a registered model that needs arguments cannot be the answer)
      continue
    if type(candidate) is not type(module):
      continue
    diff = overrides(name, want)
    if best is None or (len(diff), -len(name)) < (len(best[1]), -len(best[0])):
      best = (name, diff)
  if best is None:
    raise ConfigError(f'no registered model builds a {type(module).__name__}')
  return best


def square_side(n: int) -> int | None:
  """`s` when `n == s * s`, else None."""
  side = int(round(np.sqrt(n)))
  return side if side * side == n else None


def build(name: str, kwargs: dict[str, Any], converted: dict[str, np.ndarray], source: StateDict | None,
          image_size: int, channels: int = 3) -> tuple[nn.Module, dict[str, Any]]:
  """`models.create(name, **kwargs)`, named `name` (its registry name, which `closest_name` reports), with `converted`
  checked against its variables (every parameter filled with the right shape) and, when `source` is given, every
  source tensor used."""
  module = models.create(name, **kwargs).clone(name=name)
  where = source.source if source is not None else name
  variables = fill(module, jnp.zeros((1, image_size, image_size, channels)), converted, where)
  if source is not None:
    source.check_all_used()
  return module, variables
