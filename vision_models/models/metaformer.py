"""MetaFormer baselines (Yu et al. 2022, 2023): PoolFormer v1/v2, ConvFormer, CAFormer, timm's layout in flax.linen,
NHWC.

Stem: 7×7 stride-4 conv (padding 2) → norm. Stages 1-3 start with norm → 3×3 stride-2 conv (padding 1). Block:
x·res_scale + layer_scale·mixer(norm1(x)), then x·res_scale + layer_scale·mlp(norm2(x)) (res scale and layer scale are
optional per-channel scales). Head: global average pool → LayerNorm (bias) → Linear, or the MlpHead (Dense 4d →
squared ReLU → LayerNorm → Dense) of the v2 baselines.

Token mixers come from `vision_models.models.mixers` by name: `pooling` (avg pool 3×3 minus the input), `sepconv`
(1×1 → StarReLU → 7×7 depthwise → 1×1) and `metaformer_attention` (32-wide heads, no biases, registered here).
`mixer` is one name or one per stage; `mixer_overrides` ({'a:b': name}, global block indices) puts any registered
mixer in any block, `mixer_options` reach every mixer (each takes the options it names, e.g. `conv_impl='shift'`). Module names follow timm's state dict
(`stem_conv`, `stages_i_downsample_{norm,conv}`, `stages_i_blocks_j/{norm1,token_mixer,...}`, `head_norm`, `head_fc`).
"""
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_models import kernels
from vision_models.errors import ConfigError
from vision_models.models import layers, mixer_ops, mixers, patch_conv
from vision_models.models.registry import register

init = layers.trunc_normal(0.02)  # timm's init of every conv and linear weight (biases zero).


def squared_relu(x: jax.Array) -> jax.Array:
  return jnp.square(nn.relu(x))


class Attention(nn.Module):
  """CAFormer's self-attention: q/k/v and output projections without biases (by default), heads of width
  dim / num_heads, kernels `[embed, heads, kv]` as `layers.Attention` lays them out."""
  num_heads: int
  qkv_bias: bool = False
  proj_bias: bool = False
  impl: str = 'xla'
  dtype: Any = None

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    dim, heads = tokens.shape[-1], self.num_heads
    head_dim = dim // heads
    dtype = self.dtype or tokens.dtype

    def proj(name):
      w = self.param(f'{name}_kernel', layers.with_axes(init, ('embed', 'heads', 'kv')), (dim, heads, head_dim))
      y = jnp.einsum('...d,dhk->...hk', tokens.astype(dtype), w.astype(dtype))
      if self.qkv_bias:
        y = y + self.param(f'{name}_bias', layers.with_axes(nn.initializers.zeros, ('heads', 'kv')),
                           (heads, head_dim)).astype(dtype)
      return y

    out = kernels.attention(proj('query'), proj('key'), proj('value'), impl=self.impl)
    out = layers.constrain(out, ('batch', 'length', 'act_heads', None))
    w = self.param('out_kernel', layers.with_axes(init, ('heads', 'kv', 'embed')), (heads, head_dim, dim))
    out = jnp.einsum('...hk,hkd->...d', out, w.astype(dtype))
    if self.proj_bias:
      out = out + self.param('out_bias', layers.with_axes(nn.initializers.zeros, ('embed',)), (dim,)).astype(dtype)
    return out


mixers.register_token_mixer('metaformer_attention', lambda *, num_heads, impl, dtype, name, qkv_bias=False,
                            proj_bias=False, **_: Attention(num_heads, qkv_bias, proj_bias, impl, dtype, name=name))

NORMS = ('layer', 'group')
ACTS = ('star_relu', 'gelu')


def norm_layer(kind: str, use_bias: bool, eps: float, dtype: Any, name: str) -> nn.Module:
  """`layer`: LayerNorm over channels (timm's LayerNorm2d); `group`: GroupNorm with one group, i.e. over (H, W, C)."""
  if kind == 'group':
    return nn.GroupNorm(num_groups=1, epsilon=eps, use_bias=use_bias, use_fast_variance=False, dtype=dtype, name=name,
                        scale_init=layers.with_axes(nn.initializers.ones, ('embed',)),
                        bias_init=layers.with_axes(nn.initializers.zeros, ('embed',)))
  return layers.layer_norm(eps, use_bias=use_bias, dtype=dtype, name=name)


class Mlp(nn.Module):
  """Dense (4d) → StarReLU or exact GELU → Dense (d): timm's 1×1-conv / Linear MLP, biases optional."""
  hidden_dim: int
  act: str = 'star_relu'
  use_bias: bool = False
  dropout: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dim = x.shape[-1]
    x = layers.dense(self.hidden_dim, ('embed', 'mlp'), use_bias=self.use_bias, kernel_init=init, dtype=self.dtype,
                     name='fc1')(x)
    x = mixer_ops.StarReLU(name='act')(x) if self.act == 'star_relu' else layers.gelu(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = layers.dense(dim, ('mlp', 'embed'), use_bias=self.use_bias, kernel_init=init, dtype=self.dtype, name='fc2')(x)
    return nn.Dropout(self.dropout, deterministic=not train)(x)


class Block(nn.Module):
  """norm → token mixer → (layer scale) → drop path, plus the (res-scaled) input; the same with the MLP."""
  mixer: str
  mixer_options: Mapping[str, Any]
  norm: str = 'layer'
  norm_bias: bool = False
  norm_eps: float = 1e-6
  mlp_act: str = 'star_relu'
  mlp_bias: bool = False
  layer_scale: float | None = None
  res_scale: float | None = None
  head_dim: int = 32
  drop_path: float = 0.0
  attn_impl: str = 'xla'
  dtype: Any = None

  def residual(self, x: jax.Array, y: jax.Array, i: int, train: bool) -> jax.Array:
    if self.layer_scale is not None:
      y = layers.LayerScale(self.layer_scale, name=f'layer_scale{i}')(y)
    if self.res_scale is not None:
      x = layers.LayerScale(self.res_scale, name=f'res_scale{i}')(x)
    return x + layers.DropPath(self.drop_path)(y, train)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    b, h, w, c = x.shape
    norm = lambda name: norm_layer(self.norm, self.norm_bias, self.norm_eps, self.dtype, name)  # noqa: E731
    mixer = mixers.token_mixer(self.mixer, dim=c, num_heads=max(c // self.head_dim, 1), grid=(h, w),
                               impl=self.attn_impl, dtype=self.dtype, module_name='token_mixer',
                               **mixers.select_options(self.mixer, self.mixer_options))
    y = mixer(norm('norm1')(x).reshape(b, h * w, c), train=train).reshape(b, h, w, c)
    x = self.residual(x, y, 1, train)
    y = Mlp(4 * c, self.mlp_act, self.mlp_bias, dtype=self.dtype, name='mlp')(norm('norm2')(x), train)
    x = self.residual(x, y, 2, train)
    return layers.constrain(x, ('batch', None, None, 'act_embed'))


class MlpHead(nn.Module):
  """Dense 4d → squared ReLU → LayerNorm (eps 1e-6) → dropout → Dense classes."""
  num_classes: int
  dropout: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = layers.dense(4 * x.shape[-1], ('embed', 'mlp'), kernel_init=init, dtype=self.dtype, name='fc1')(x)
    x = layers.layer_norm(1e-6, 'mlp', dtype=self.dtype, name='norm')(squared_relu(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return layers.dense(self.num_classes, ('mlp', 'classes'), kernel_init=init, dtype=self.dtype, name='fc2')(x)


def per_stage(value: Any, stages: int, field: str) -> tuple:
  """A scalar (or a string) for every stage, or a sequence with one entry per stage."""
  if isinstance(value, str) or not isinstance(value, Sequence):
    return (value,) * stages
  if len(value) != stages:
    raise ConfigError(f'MetaFormer {field} {tuple(value)} has {len(value)} entries for {stages} stages')
  return tuple(value)


class MetaFormer(nn.Module):
  """MetaFormer classifier. `num_classes=0` returns the pooled, normalised features.

  `mixer`: token mixer name (or one per stage) from `vision_models.models.mixers`; `mixer_overrides` /
  `mixer_options` as in that module. `norm` ('layer' or 'group', with `norm_bias`, `norm_eps`) normalises inside the
  blocks; `downsample_norm` adds a bias-free LayerNorm to the stem and downsampling layers. `mlp_act`: 'star_relu' or
  'gelu'. `layer_scale` / `res_scale` (scalar or per stage; None: none) initialise the branch and residual scales.
  `head`: 'mlp' or 'linear'. `head_dim` sets the heads of attention mixers (dim // head_dim). Stochastic depth grows
  linearly from 0 to `drop_path` over all blocks; `remat` recomputes each block in the backward pass.
  """
  num_classes: int = 1000
  depths: Sequence[int] = (2, 2, 6, 2)
  dims: Sequence[int] = (64, 128, 320, 512)
  mixer: str | Sequence[str] = 'pooling'
  mixer_overrides: Mapping[str, str] | None = None
  mixer_options: Mapping[str, Any] | None = None
  norm: str = 'layer'
  norm_bias: bool = False
  norm_eps: float = 1e-6
  downsample_norm: bool = True
  mlp_act: str = 'star_relu'
  mlp_bias: bool = False
  layer_scale: float | None | Sequence[float | None] = None
  res_scale: float | None | Sequence[float | None] = (None, None, 1.0, 1.0)
  head: str = 'mlp'
  head_dim: int = 32
  head_dropout: float = 0.0
  drop_path: float = 0.0
  attn_impl: str = 'xla'
  remat: bool | str = False
  dtype: Any = None

  def check(self) -> None:
    if len(self.depths) != len(self.dims):
      raise ConfigError(f'MetaFormer depths {tuple(self.depths)} and dims {tuple(self.dims)} differ in length')
    for field, value, allowed in (('norm', self.norm, NORMS), ('mlp_act', self.mlp_act, ACTS),
                                  ('head', self.head, ('mlp', 'linear'))):
      if value not in allowed:
        raise ConfigError(f'MetaFormer {field} {value!r} is not one of {", ".join(allowed)}')

  def conv(self, features: int, kernel: int, stride: int, pad: int, name: str) -> nn.Conv:
    return patch_conv.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                           dtype=self.dtype, name=name,
                           kernel_init=layers.with_axes(init, (None, None, 'conv_in', 'embed')),
                           bias_init=layers.with_axes(nn.initializers.zeros, ('embed',)))

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    self.check()
    stages = len(self.depths)
    stage_mixers = per_stage(self.mixer, stages, 'mixer')
    layer_scales = per_stage(self.layer_scale, stages, 'layer_scale')
    res_scales = per_stage(self.res_scale, stages, 'res_scale')
    down_norm = lambda name: layers.layer_norm(1e-6, use_bias=False, dtype=self.dtype, name=name)  # noqa: E731

    x = self.conv(self.dims[0], 7, 4, 2, 'stem_conv')(images)
    if self.downsample_norm:
      x = down_norm('stem_norm')(x)
    block = layers.remat(Block, self.remat, static_argnums=(2,))
    total, index = sum(self.depths), 0
    for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      if i > 0:
        if self.downsample_norm:
          x = down_norm(f'stages_{i}_downsample_norm')(x)
        x = self.conv(dim, 3, 2, 1, f'stages_{i}_downsample_conv')(x)
      for j in range(depth):
        mixer = mixers.mixer_for_layer(stage_mixers[i], self.mixer_overrides, index, total)
        rate = self.drop_path * index / max(total - 1, 1)  # torch.linspace(0, drop_path, total), as timm.
        x = block(mixer, dict(self.mixer_options or {}), self.norm, self.norm_bias, self.norm_eps, self.mlp_act,
                  self.mlp_bias, layer_scales[i], res_scales[i], self.head_dim, rate, self.attn_impl, self.dtype,
                  name=f'stages_{i}_blocks_{j}')(x, train)
        index += 1

    x = layers.layer_norm(1e-6, dtype=self.dtype, name='head_norm')(x.mean(axis=(1, 2)))
    if not self.num_classes:
      return x
    if self.head == 'mlp':
      x = MlpHead(self.num_classes, self.head_dropout, self.dtype, name='head_fc')(x, train)
    else:
      x = nn.Dropout(self.head_dropout, deterministic=not train)(x)
      x = layers.dense(self.num_classes, ('embed', 'classes'), kernel_init=init, dtype=self.dtype, name='head_fc')(x)
    return x.astype(jnp.float32)


SMALL, MEDIUM = (64, 128, 320, 512), (96, 192, 384, 768)
POOLFORMER = {  # depths, dims, layer scale (timm metaformer.py `poolformer_*`, sail-sg/poolformer)
    's12': ((2, 2, 6, 2), SMALL, 1e-5), 's24': ((4, 4, 12, 4), SMALL, 1e-5), 's36': ((6, 6, 18, 6), SMALL, 1e-6),
    'm36': ((6, 6, 18, 6), MEDIUM, 1e-6), 'm48': ((8, 8, 24, 8), MEDIUM, 1e-6),
}
# PoolFormer v1: GroupNorm (bias, eps 1e-5) everywhere, no stem / downsampling norm, GELU MLP with biases, layer scale.
POOLFORMER_V1 = dict(mixer='pooling', norm='group', norm_bias=True, norm_eps=1e-5, downsample_norm=False,
                     mlp_act='gelu', mlp_bias=True, res_scale=None, head='linear')
CONVFORMER = {  # depths, dims (sail-sg/metaformer): CAFormer has the same sizes
    's18': ((3, 3, 9, 3), SMALL), 's36': ((3, 12, 18, 3), SMALL), 'm36': ((3, 12, 18, 3), (96, 192, 384, 576)),
    'b36': ((3, 12, 18, 3), (128, 256, 512, 768)),
}
CAFORMER_MIXERS = ('sepconv',) * 2 + ('metaformer_attention',) * 2

register('metaformer', MetaFormer)
for _size, (_depths, _dims, _ls) in POOLFORMER.items():
  register(f'poolformer_{_size}', MetaFormer, depths=_depths, dims=_dims, layer_scale=_ls, **POOLFORMER_V1)
  register(f'poolformerv2_{_size}', MetaFormer, depths=_depths, dims=_dims, norm='group', head='linear')
for _size, (_depths, _dims) in CONVFORMER.items():
  register(f'convformer_{_size}', MetaFormer, depths=_depths, dims=_dims, mixer='sepconv')
  register(f'caformer_{_size}', MetaFormer, depths=_depths, dims=_dims, mixer=CAFORMER_MIXERS)
