"""MLP-Mixer, the timm layout in flax.linen, NHWC.

Patchify conv → blocks of [LN → token-mixing MLP over the patch axis → residual, LN → channel-mixing MLP → residual]
→ LN → mean over patches → head. LayerNorm eps 1e-6, exact GELU (timm). Module names follow timm's state dict
(`stem`, `blocks_i/{norm1,mlp_tokens,norm2,mlp_channels}`, `norm`, `head`).

The token-mixing MLP's input width is the number of patches, so a checkpoint only runs at its training resolution.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_models.models import layers, patch_conv
from vision_models.models.registry import register

VARIANTS = {  # width, depth, tokens_mlp_dim, channels_mlp_dim (big_vision models/mlp_mixer.py)
    's': (512, 8, 256, 2048),
    'b': (768, 12, 384, 3072),
    'l': (1024, 24, 512, 4096),
    'h': (1280, 32, 640, 5120),
}
PATCHES = {'s': (32, 16), 'b': (32, 16), 'l': (32, 16), 'h': (14,)}


class MixerBlock(nn.Module):
  tokens_mlp_dim: int
  channels_mlp_dim: int
  drop_path: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = layers.layer_norm(dtype=self.dtype, name='norm1')(x)
    y = layers.Mlp(self.tokens_mlp_dim, in_axis=None, dtype=self.dtype, name='mlp_tokens')(y.swapaxes(1, 2), train)
    x = x + layers.DropPath(self.drop_path)(y.swapaxes(1, 2), train)
    y = layers.layer_norm(dtype=self.dtype, name='norm2')(x)
    y = layers.Mlp(self.channels_mlp_dim, dtype=self.dtype, name='mlp_channels')(y, train)
    x = x + layers.DropPath(self.drop_path)(y, train)
    return layers.constrain(x, ('batch', 'length', 'act_embed'))


class Mixer(nn.Module):
  """MLP-Mixer classifier. `num_classes=0` returns the pooled features. Stochastic depth grows linearly from 0 to
  `drop_path` over the blocks (big_vision; timm uses one rate for all). `remat` recomputes each block."""
  num_classes: int = 1000
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  tokens_mlp_dim: int = 384
  channels_mlp_dim: int = 3072
  drop_path: float = 0.0
  remat: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    p = self.patch_size
    x = patch_conv.Conv(self.width, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype, name='stem',
                        kernel_init=layers.with_axes(nn.initializers.lecun_normal(), (None, None, 'conv_in', 'embed')),
                        bias_init=layers.with_axes(nn.initializers.zeros, ('embed',)))(images)
    batch, h, w, _ = x.shape
    x = layers.constrain(x.reshape(batch, h * w, self.width), ('batch', 'length', 'act_embed'))
    block = nn.remat(MixerBlock, static_argnums=(2,)) if self.remat else MixerBlock
    for i in range(self.depth):
      rate = self.drop_path * i / max(self.depth - 1, 1)
      x = block(self.tokens_mlp_dim, self.channels_mlp_dim, rate, self.dtype, name=f'blocks_{i}')(x, train)
    x = layers.layer_norm(dtype=self.dtype, name='norm')(x).mean(axis=1)
    if not self.num_classes:
      return x
    return layers.dense(self.num_classes, ('embed', 'classes'), kernel_init=nn.initializers.zeros,
                        dtype=self.dtype, name='head')(x).astype(jnp.float32)


register('mixer', Mixer)
for _size, (_width, _depth, _tokens, _channels) in VARIANTS.items():
  for _patch in PATCHES[_size]:
    register(f'mixer_{_size}{_patch}', Mixer, patch_size=_patch, width=_width, depth=_depth, tokens_mlp_dim=_tokens,
             channels_mlp_dim=_channels)
