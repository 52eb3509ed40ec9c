"""Models by name: `create(name, **kwargs)` returns a flax.linen module, `names()` lists them all."""
from vision_models.models.registry import create, names, register
from vision_models.models import vit  # noqa: F401  (registers the ViT family)
from vision_models.models import convnext  # noqa: F401  (registers ConvNeXt V1 and V2)
from vision_models.models import dit  # noqa: F401  (registers the DiT family)
from vision_models.models import maxvit  # noqa: F401  (registers the MaxViT family)
from vision_models.models import mixer  # noqa: F401  (registers MLP-Mixer)
from vision_models.models import nextvit  # noqa: F401  (registers Next-ViT)
from vision_models.models import unireplknet  # noqa: F401  (registers UniRepLKNet)
from vision_models.models import metaformer  # noqa: F401  (registers PoolFormer v1/v2, ConvFormer, CAFormer)
from vision_models.models import inception_next  # noqa: F401  (registers InceptionNeXt)

__all__ = ['create', 'names', 'register', 'param_count']


def param_count(params) -> int:
  """Number of scalars in a parameter pytree (the `params` collection only, as timm counts)."""
  import jax
  return sum(x.size for x in jax.tree.leaves(params))
