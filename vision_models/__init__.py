"""ConvNeXt, ViT, MLP-Mixer, MaxViT and DiT in JAX/Flax. Subpackages are imported on use, so `import vision_models`
stays light; `vision_models.load_exported(path)` loads a model written by `python -m vision_models.export`."""
from typing import Any

__all__ = ['load_exported']


def __getattr__(name: str) -> Any:
  if name == 'load_exported':
    from vision_models.export import load_exported
    return load_exported
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
