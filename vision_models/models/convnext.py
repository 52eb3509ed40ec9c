"""ConvNeXt (V1) and ConvNeXt V2, the timm layout in flax.linen, NHWC.

Stem: 4×4 stride-4 conv + LayerNorm. Stages 1-3 start with LayerNorm + 2×2 stride-2 conv. Block: 7×7 depthwise conv →
LayerNorm → Dense 4·d → exact GELU (→ GRN in V2) → Dense d → layer scale (V1) → drop path → residual. Head: global
average pool → LayerNorm → Dense. Every LayerNorm has eps 1e-6. Module names follow timm's state dict
(`stem_conv`/`stem_norm`, `stages_i_downsample_{norm,conv}`, `stages_i_blocks_j/{conv_dw,norm,mlp,ls}`,
`head_norm`, `head`) so conversion is a rename plus transposes.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_models.errors import ConfigError
from vision_models.models import layers, mixers, patch_conv
from vision_models.models.registry import register

EPS = 1e-6
V1 = {  # depths, dims (facebookresearch/ConvNeXt)
    't': ((3, 3, 9, 3), (96, 192, 384, 768)),
    's': ((3, 3, 27, 3), (96, 192, 384, 768)),
    'b': ((3, 3, 27, 3), (128, 256, 512, 1024)),
    'l': ((3, 3, 27, 3), (192, 384, 768, 1536)),
    'xl': ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}
V2 = {  # atto … nano are timm's sizes; tiny … huge facebookresearch/ConvNeXt-V2's
    'a': ((2, 2, 6, 2), (40, 80, 160, 320)),
    'f': ((2, 2, 6, 2), (48, 96, 192, 384)),
    'p': ((2, 2, 6, 2), (64, 128, 256, 512)),
    'n': ((2, 2, 8, 2), (80, 160, 320, 640)),
    't': ((3, 3, 9, 3), (96, 192, 384, 768)),
    'b': ((3, 3, 27, 3), (128, 256, 512, 1024)),
    'l': ((3, 3, 27, 3), (192, 384, 768, 1536)),
    'h': ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}

conv_init = layers.trunc_normal(0.02)


def depthwise_conv(channels: int, kernel_size: int, impl: str = 'auto', dtype: Any = None,
                   name: str | None = None) -> nn.Module:
  """The block's depthwise conv ('same' padding, bias), kernel `[k, k, 1, channels]` as `nn.Conv` has it: `xla` (a
  grouped conv, cuDNN's on GPUs), `shift` (elementwise shifted products, many times faster on the CPU), `pallas`
  (the large-kernel Pallas kernel) or `auto` (see `layers.depthwise_conv`)."""
  if impl not in layers.DEPTHWISE_IMPLS:
    raise ConfigError(f'unknown depthwise_impl {impl!r} (config.model.depthwise_impl); choose one of '
                      f'{", ".join(layers.DEPTHWISE_IMPLS)}')
  return layers.DepthwiseConv((kernel_size, kernel_size), kernel_init=conv_init, impl=impl, axis_name='embed',
                              dtype=dtype, name=name)


class GRN(nn.Module):
  """Global response normalisation (ConvNeXt V2): x + γ·(x·N(x)) + β with N(x) = ‖x‖₂,HW / mean_C ‖x‖₂,HW."""
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    gamma = self.param('weight', layers.with_axes(nn.initializers.zeros, ('mlp',)), (dim,))
    beta = self.param('bias', layers.with_axes(nn.initializers.zeros, ('mlp',)), (dim,))
    # The norm in float32: a sum of squares over the whole map overflows bfloat16's precision.
    gx = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=(1, 2), keepdims=True))
    nx = gx / (gx.mean(axis=-1, keepdims=True) + self.eps)
    return (x + gamma.astype(x.dtype) * (x * nx.astype(x.dtype)) + beta.astype(x.dtype)).astype(x.dtype)


class Mlp(nn.Module):
  """Dense 4d → exact GELU (→ GRN) → Dense d, hidden units on the `mlp` axis."""
  grn: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    x = layers.gelu(layers.dense(4 * dim, ('embed', 'mlp'), kernel_init=conv_init, dtype=self.dtype, name='fc1')(x))
    if self.grn:
      x = GRN(name='grn')(x)
    return layers.dense(dim, ('mlp', 'embed'), kernel_init=conv_init, dtype=self.dtype, name='fc2')(x)


class Block(nn.Module):
  """dwconv → LN → Dense 4d → GELU (→ GRN) → Dense d (→ layer scale) → drop path, plus the residual.

  The depthwise conv is the token mixer `mixer` of `models/mixers.py` (`dwconv`, under `conv_dw`; any other under
  `mixer`) on the map flattened to tokens (no prefix); attention gets a head per 32 channels."""
  kernel_size: int = 7
  layer_scale: float | None = 1e-6
  grn: bool = False
  drop_path: float = 0.0
  depthwise_impl: str = 'auto'
  dtype: Any = None
  mixer: str = 'dwconv'
  mixer_options: Any = None
  attn_impl: str = 'xla'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    batch, h, w, dim = x.shape
    options = mixers.select_options(self.mixer, {'kernel_size': self.kernel_size, 'conv_impl': self.depthwise_impl,
                                                 **dict(self.mixer_options or {})})
    mixer = mixers.token_mixer(self.mixer, dim=dim, num_heads=max(1, dim // 32), grid=(h, w), prefix=0,
                               impl=self.attn_impl, dtype=self.dtype,
                               module_name='conv_dw' if self.mixer == 'dwconv' else 'mixer', **options)
    y = mixer(x.reshape(batch, h * w, dim), train=train).reshape(batch, h, w, dim)
    y = layers.layer_norm(EPS, dtype=self.dtype, name='norm')(y)
    y = Mlp(self.grn, self.dtype, name='mlp')(y)
    if self.layer_scale is not None:
      y = layers.LayerScale(self.layer_scale, name='ls')(y)
    x = x + layers.DropPath(self.drop_path)(y, train)
    return layers.constrain(x, ('batch', None, None, 'act_embed'))


class ConvNeXt(nn.Module):
  """ConvNeXt classifier (V2: `grn=True, layer_scale=None`). `num_classes=0` returns the pooled, normalised features.

  `kernel_size` sets the depthwise kernel (7 in the papers; larger for large-kernel studies), `depthwise_impl` its
  implementation (`auto`, the default: `shift` on CPUs, where it is many times faster, else `xla`'s grouped conv;
  see `depthwise_conv`). Stochastic depth grows
  linearly from 0 to `drop_path` over all blocks. `remat` recomputes each block in the backward pass.
  `head_init_scale` scales the initial head (0.001 when fine-tuning, as in the paper).
  `mixer` replaces every block's depthwise conv by another token mixer of `models/mixers.py`, `mixer_overrides` by
  global block range across stages (`{'12:18': 'attention'}`), `mixer_options` passes options (`attn_impl` picks
  the attention kernel; `kernel_size` and `depthwise_impl` reach the conv mixers).
  """
  num_classes: int = 1000
  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  kernel_size: int = 7
  patch_size: int = 4
  layer_scale: float | None = 1e-6
  grn: bool = False
  drop_path: float = 0.0
  head_init_scale: float = 1.0
  depthwise_impl: str = 'auto'
  remat: bool = False
  dtype: Any = None
  mixer: str = 'dwconv'
  mixer_overrides: Any = None
  mixer_options: Any = None
  attn_impl: str = 'xla'

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    if len(self.depths) != len(self.dims):
      raise ConfigError(f'ConvNeXt depths {tuple(self.depths)} and dims {tuple(self.dims)} differ in length')
    depthwise_conv(1, self.kernel_size, self.depthwise_impl)  # Validates depthwise_impl, naming the field.
    total = sum(self.depths)
    names = [mixers.mixer_for_layer(self.mixer, self.mixer_overrides, i, total) for i in range(total)]
    mixers.check_options(names, self.mixer_options)
    p = self.patch_size
    x = patch_conv.Conv(self.dims[0], (p, p), strides=(p, p), padding='VALID', dtype=self.dtype, name='stem_conv',
                        kernel_init=layers.with_axes(conv_init, (None, None, 'conv_in', 'embed')),
                        bias_init=layers.with_axes(nn.initializers.zeros, ('embed',)))(images)
    x = layers.layer_norm(EPS, dtype=self.dtype, name='stem_norm')(x)

    block = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
    index = 0
    for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      if i > 0:
        x = layers.layer_norm(EPS, dtype=self.dtype, name=f'stages_{i}_downsample_norm')(x)
        x = patch_conv.Conv(dim, (2, 2), strides=(2, 2), padding='VALID', dtype=self.dtype,
                            name=f'stages_{i}_downsample_conv',
                            kernel_init=layers.with_axes(conv_init, (None, None, 'conv_in', 'embed')),
                            bias_init=layers.with_axes(nn.initializers.zeros, ('embed',)))(x)
      for j in range(depth):
        rate = self.drop_path * index / max(total - 1, 1)  # torch.linspace(0, drop_path, total), as timm.
        x = block(self.kernel_size, self.layer_scale, self.grn, rate, self.depthwise_impl, self.dtype, names[index],
                  self.mixer_options, self.attn_impl, name=f'stages_{i}_blocks_{j}')(x, train)
        index += 1

    x = layers.layer_norm(EPS, dtype=self.dtype, name='head_norm')(x.mean(axis=(1, 2)))
    if not self.num_classes:
      return x
    scaled = lambda init: lambda *a: init(*a) * self.head_init_scale  # noqa: E731
    return layers.dense(self.num_classes, ('embed', 'classes'), kernel_init=scaled(conv_init),
                        bias_init=scaled(nn.initializers.zeros), dtype=self.dtype,
                        name='head')(x).astype(jnp.float32)


register('convnext', ConvNeXt)
for _size, (_depths, _dims) in V1.items():
  register(f'convnext_{_size}', ConvNeXt, depths=_depths, dims=_dims)
for _size, (_depths, _dims) in V2.items():
  register(f'convnextv2_{_size}', ConvNeXt, depths=_depths, dims=_dims, grn=True, layer_scale=None)
