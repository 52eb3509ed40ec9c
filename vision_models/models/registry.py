"""The model registry: every model is created by name, timm-style."""
from typing import Any, Callable

import flax.linen as nn

from vision_models.errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str, factory: Callable[..., nn.Module] | None = None, **defaults: Any):
  """Registers `factory(**defaults, **kwargs)` under `name`; usable as a decorator when `factory` is None."""

  def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if name in _REGISTRY:
      raise ValueError(f'model {name!r} is registered twice')
    _REGISTRY[name] = lambda **kwargs: fn(**{**defaults, **kwargs})
    return fn

  return add if factory is None else add(factory)


def names() -> list[str]:
  """Every registered model name, sorted."""
  return sorted(_REGISTRY)


def create(name: str, **kwargs: Any) -> nn.Module:
  """Builds the registered model `name`; keyword arguments override the variant's defaults."""
  if name not in _REGISTRY:
    close = [n for n in names() if n.split('_')[0] == name.split('_')[0]][:8]
    hint = f'; close: {", ".join(close)}' if close else ''
    raise ConfigError(f'unknown model {name!r} (config.model.name){hint}; '
                      'vision_models.models.names() lists all')
  try:
    return _REGISTRY[name](**kwargs)
  except TypeError as e:  # An unknown keyword in config.model: name it instead of a dataclass traceback.
    raise ConfigError(f'model {name!r}: {e} (check the fields of config.model)') from None
