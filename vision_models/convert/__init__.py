"""Weight conversion from timm and the official checkpoints into our modules."""
from vision_models.convert.common import from_timm, register_timm
from vision_models.convert.dit import from_dit

__all__ = ['from_dit', 'from_timm', 'register_timm']
