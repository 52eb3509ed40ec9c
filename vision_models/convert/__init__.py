"""Weight conversion from timm and the official checkpoints into our modules."""
from vision_models.convert.common import from_timm, register_timm
from vision_models.convert import maxvit  # noqa: F401  (registers the MaxViT converter)

__all__ = ['from_timm', 'register_timm']
