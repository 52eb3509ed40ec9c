"""Weight conversion from timm and the official checkpoints into our modules."""
from vision_models.convert.common import from_timm, register_timm
from vision_models.convert import convnext, mixer, timm_vit  # noqa: F401  (register their timm converters)
from vision_models.convert.vit_npz import from_vit_npz

__all__ = ['from_timm', 'from_vit_npz', 'register_timm']
