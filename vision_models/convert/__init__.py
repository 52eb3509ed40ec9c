"""Weight conversion from timm and the official checkpoints into our modules."""
from vision_models.convert.common import from_timm, register_timm
from vision_models.convert import convnext, maxvit, mixer, timm_vit  # noqa: F401  (register their timm converters)
from vision_models.convert import nextvit  # noqa: F401  (registers the Next-ViT timm converter)
from vision_models.convert import inception_next, metaformer  # noqa: F401  (InceptionNeXt; MetaFormer baselines)
from vision_models.convert.dit import from_dit
from vision_models.convert.inception import from_pytorch_fid
from vision_models.convert.vae import from_diffusers_vae
from vision_models.convert.vit_npz import from_vit_npz
from vision_models.convert.unireplknet import from_unireplknet

__all__ = ['from_diffusers_vae', 'from_dit', 'from_pytorch_fid', 'from_timm', 'from_unireplknet', 'from_vit_npz',
           'register_timm']
