"""InceptionNeXt (Yu et al. 2023), timm's `MetaNeXt` layout in flax.linen, NHWC.

Stem: 4×4 stride-4 conv → BatchNorm. Stages 1-3 start with BatchNorm → 2×2 stride-2 conv. Block (MetaNeXt): token
mixer → BatchNorm → Dense r·d → exact GELU → Dense d → layer scale (1e-6) → drop path, plus the input; r is 4 in
stages 0-2 and 3 in the last. Head: global average pool → Dense 3d → GELU → LayerNorm (eps 1e-6) → Dense classes.

The token mixer is `inception_dwconv` from `vision_models.models.mixers`: the channels split
into an identity part and three branches of `branch_ratio`·d channels, a 3×3, a 1×11 and an 11×1 depthwise conv.
`mixer` / `mixer_overrides` / `mixer_options` put any registered mixer in any block (see mixers.py). BatchNorm
statistics live in the `batch_stats` collection (eps 1e-5, momentum 0.1 as PyTorch's). Module names follow timm's state
dict (`stem_conv`/`stem_norm`, `stages_i_downsample_{norm,conv}`, `stages_i_blocks_j/{token_mixer,norm,mlp,ls}`,
`head_fc1`, `head_norm`, `head_fc2`).
"""
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_models.errors import ConfigError
from vision_models.models import layers, mixers, patch_conv
from vision_models.models.metaformer import Mlp, init, per_stage
from vision_models.models.registry import register

VARIANTS = {  # depths, dims (sail-sg/inceptionnext; atto is timm's)
    'a': ((2, 2, 6, 2), (40, 80, 160, 320)),
    't': ((3, 3, 9, 3), (96, 192, 384, 768)),
    's': ((3, 3, 27, 3), (96, 192, 384, 768)),
    'b': ((3, 3, 27, 3), (128, 256, 512, 1024)),
}


def batch_norm(train: bool, dtype: Any = None, name: str | None = None) -> nn.BatchNorm:
  """PyTorch's BatchNorm2d defaults (eps 1e-5, running averages updated by 0.1 per step)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name,
                      scale_init=layers.with_axes(nn.initializers.ones, ('embed',)),
                      bias_init=layers.with_axes(nn.initializers.zeros, ('embed',)))


class Block(nn.Module):
  """token mixer → BatchNorm → MLP (r·d, GELU) → layer scale → drop path, plus the input."""
  mixer: str
  mixer_options: Mapping[str, Any]
  mlp_ratio: float = 4.0
  layer_scale: float | None = 1e-6
  head_dim: int = 32
  drop_path: float = 0.0
  attn_impl: str = 'xla'
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    b, h, w, c = x.shape
    mixer = mixers.token_mixer(self.mixer, dim=c, num_heads=max(c // self.head_dim, 1), grid=(h, w),
                               impl=self.attn_impl, dtype=self.dtype, module_name='token_mixer',
                               **mixers.select_options(self.mixer, self.mixer_options))
    y = mixer(x.reshape(b, h * w, c), train=train).reshape(b, h, w, c)
    y = batch_norm(train, self.dtype, name='norm')(y)
    y = Mlp(int(self.mlp_ratio * c), 'gelu', use_bias=True, dtype=self.dtype, name='mlp')(y, train)
    if self.layer_scale:
      y = layers.LayerScale(self.layer_scale, name='ls')(y)
    x = x + layers.DropPath(self.drop_path)(y, train)
    return layers.constrain(x, ('batch', None, None, 'act_embed'))


class InceptionNeXt(nn.Module):
  """InceptionNeXt classifier. `num_classes=0` returns the head's pre-logits (3·d after its LayerNorm), as timm.

  `mixer` (one name or one per stage), `mixer_overrides`, `mixer_options`: see `vision_models.models.mixers`
  (`mixer_options={'conv_impl': 'shift'}` makes the depthwise convs fast on CPUs). `head_dim` sets the heads of
  attention mixers put in by overrides. Stochastic depth grows linearly from 0 to `drop_path` over all blocks;
  `remat` recomputes each block in the backward pass.
  """
  num_classes: int = 1000
  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  mlp_ratios: float | Sequence[float] = (4, 4, 4, 3)
  mixer: str | Sequence[str] = 'inception_dwconv'
  mixer_overrides: Mapping[str, str] | None = None
  mixer_options: Mapping[str, Any] | None = None
  layer_scale: float | None = 1e-6
  head_mlp_ratio: float = 3.0
  head_dim: int = 32
  head_dropout: float = 0.0
  drop_path: float = 0.0
  attn_impl: str = 'xla'
  remat: bool | str = False
  dtype: Any = None

  def conv(self, features: int, size: int, name: str) -> nn.Conv:
    return patch_conv.Conv(features, (size, size), strides=(size, size), padding='VALID', dtype=self.dtype, name=name,
                           kernel_init=layers.with_axes(init, (None, None, 'conv_in', 'embed')),
                           bias_init=layers.with_axes(nn.initializers.zeros, ('embed',)))

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    if len(self.depths) != len(self.dims):
      raise ConfigError(f'InceptionNeXt depths {tuple(self.depths)} and dims {tuple(self.dims)} differ in length')
    stages = len(self.depths)
    stage_mixers = per_stage(self.mixer, stages, 'mixer')
    ratios = per_stage(self.mlp_ratios, stages, 'mlp_ratios')
    x = batch_norm(train, self.dtype, name='stem_norm')(self.conv(self.dims[0], 4, 'stem_conv')(images))
    block = layers.remat(Block, self.remat, static_argnums=(2,))
    total, index = sum(self.depths), 0
    for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      if i > 0:
        x = batch_norm(train, self.dtype, name=f'stages_{i}_downsample_norm')(x)
        x = self.conv(dim, 2, f'stages_{i}_downsample_conv')(x)
      for j in range(depth):
        mixer = mixers.mixer_for_layer(stage_mixers[i], self.mixer_overrides, index, total)
        rate = self.drop_path * index / max(total - 1, 1)  # torch.linspace(0, drop_path, total), as timm.
        x = block(mixer, dict(self.mixer_options or {}), ratios[i], self.layer_scale, self.head_dim, rate,
                  self.attn_impl, self.dtype, name=f'stages_{i}_blocks_{j}')(x, train)
        index += 1

    x = x.mean(axis=(1, 2))
    hidden = int(self.head_mlp_ratio * x.shape[-1])
    x = layers.dense(hidden, ('embed', 'mlp'), kernel_init=init, dtype=self.dtype, name='head_fc1')(x)
    x = layers.layer_norm(1e-6, 'mlp', dtype=self.dtype, name='head_norm')(layers.gelu(x))
    if not self.num_classes:
      return x
    x = nn.Dropout(self.head_dropout, deterministic=not train)(x)
    x = layers.dense(self.num_classes, ('mlp', 'classes'), kernel_init=init, dtype=self.dtype, name='head_fc2')(x)
    return x.astype(jnp.float32)


register('inception_next', InceptionNeXt)
for _size, (_depths, _dims) in VARIANTS.items():
  _options = {'band_kernel_size': 9, 'branch_ratio': 0.25} if _size == 'a' else None
  register(f'inception_next_{_size}', InceptionNeXt, depths=_depths, dims=_dims, mixer_options=_options)
