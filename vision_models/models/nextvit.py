"""Next-ViT (Li et al. 2022, "Next-ViT: Next Generation Vision Transformer for Efficient Deployment"), timm's layout in
flax.linen, NHWC.

Stem: four 3×3 conv → BatchNorm → ReLU (strides 2, 1, 1, 2). Four stages (strides 1, 2, 2, 2) of two block kinds,
the "next hybrid strategy": a Next Convolution Block (NCB: patch embed → residual multi-head convolutional attention
(grouped 3×3 conv, BN, ReLU, 1×1) → residual BN → 1×1 MLP ×3) and, at the end of stages 2 and 4 and after every four
NCBs in stage 3, a Next Transformer Block (NTB): a patch embed to ¾ of the width, residual efficient self-attention
(BN'd tokens; keys and values from tokens average-pooled r² at a time along the flattened sequence, then BN), a
residual MHCA on a 1×1 projection to the remaining ¼, the two concatenated, then a residual BN → MLP ×2. Patch embeds
that downsample average-pool 2×2 (ceil mode, padding not counted) before their 1×1 conv + BN. Head: BN → global
average pool → Dense.

Every BatchNorm is kept (eps 1e-5, statistics in `batch_stats`); timm's `reparameterize()` folds the pre-norms into
the following q/k/v/fc1 for deployment, which `vision_models.convert.nextvit` undoes by filling identity BNs. Module
names follow timm's state dict (`stem_I_{conv,norm}`, `stages_I_blocks_J/...`, `norm`, `head`). MHCA and E-MHSA are
the token mixers `mhca` / `e_mhsa` of `models/mixers.py`: `mixer_overrides` puts any registered mixer in any block.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_models import kernels
from vision_models.errors import ConfigError
from vision_models.models import layers, mixer_ops, mixers
from vision_models.models.registry import register

BN_EPS = 1e-5
SR_RATIOS = (8, 4, 2, 1)  # Keys/values pooled sr² tokens at a time, per stage.
DEPTHS = {'small': (3, 4, 10, 3), 'base': (3, 4, 20, 3), 'large': (3, 4, 30, 3)}  # timm's variant names

init = layers.trunc_normal(0.02)


def batch_norm(train: bool, dtype: Any = None, name: str | None = None) -> nn.BatchNorm:
  """PyTorch's BatchNorm defaults (eps 1e-5, momentum 0.1 ≙ Flax 0.9)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPS, dtype=dtype, name=name,
                      scale_init=layers.with_axes(nn.initializers.ones, ('conv_out',)),
                      bias_init=layers.with_axes(nn.initializers.zeros, ('conv_out',)))


def pointwise(features: int, use_bias: bool, dtype: Any, name: str, axes=('conv_in', 'conv_out')) -> nn.Dense:
  """A 1×1 conv as a Dense over channels (timm's Conv2d weight `(out, in, 1, 1)` is its kernel transposed)."""
  return layers.dense(features, axes, use_bias=use_bias, kernel_init=init, dtype=dtype, name=name)


def hybrid_layout(depths: Sequence[int]) -> list[list[tuple[str, int]]]:
  """(block kind, output width) per block per stage, as timm derives them from the depths."""
  if len(depths) != 4 or depths[2] % 5:
    raise ConfigError(f'Next-ViT depths must be 4 stages with stage 3 a multiple of 5, got {tuple(depths)}')
  return [[('ncb', 96)] * depths[0],
          [('ncb', 192)] * (depths[1] - 1) + [('ntb', 256)],
          [b for _ in range(depths[2] // 5) for b in [('ncb', 384)] * 4 + [('ntb', 512)]],
          [('ncb', 768)] * (depths[3] - 1) + [('ntb', 1024)]]


def make_divisible(v: float, divisor: int) -> int:
  """timm's `_make_divisible`: the nearest multiple of `divisor`, at most 10% below `v`."""
  out = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return out + divisor if out < 0.9 * v else out


class PatchEmbed(nn.Module):
  """2×2 average pool (stride 2) → 1×1 conv → BN; without the pool at stride 1; the identity at equal widths."""
  features: int
  stride: int = 1
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.stride == 2:  # ceil_mode with count_include_pad=False: a partial last window averages what it covers.
      pad = ((0, x.shape[1] % 2), (0, x.shape[2] % 2))
      x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding=pad, count_include_pad=False)
    elif x.shape[-1] == self.features:
      return x
    x = pointwise(self.features, False, self.dtype, 'conv')(x)
    return batch_norm(train, self.dtype, 'norm')(x)


class ConvAttention(nn.Module):
  """Multi-head convolutional attention (the `mhca` token mixer): grouped 3×3 conv (one group per head) → BN → ReLU
  → 1×1 conv, on the tokens' h×w grid (prefix tokens get the grid mean, see `mixer_ops.on_grid`)."""
  num_heads: int
  grid: tuple[int, int] | None = None
  prefix: int = 0
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dim = x.shape[-1]

    def mix(g):
      g = nn.Conv(dim, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=self.num_heads, use_bias=False,
                  dtype=self.dtype, kernel_init=layers.with_axes(init, (None, None, None, 'conv_out')),
                  name='group_conv3x3')(g)
      g = nn.relu(batch_norm(train, self.dtype, 'norm')(g))
      return pointwise(dim, False, self.dtype, 'projection')(g)

    return mixer_ops.on_grid(x, self.grid, self.prefix, mix)


class ConvMlp(nn.Module):
  """1×1 conv → ReLU → 1×1 conv, hidden units on the `mlp` axis."""
  hidden: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    x = nn.relu(pointwise(self.hidden, True, self.dtype, 'fc1', ('embed', 'mlp'))(x))
    return pointwise(dim, True, self.dtype, 'fc2', ('mlp', 'embed'))(x)


class EfficientAttention(nn.Module):
  """E-MHSA (the `e_mhsa` token mixer): queries from every token; keys/values from tokens average-pooled `sr²` at a
  time along the flattened (row-major) sequence, as timm's AvgPool1d does (a trailing remainder is dropped), then
  BN."""
  num_heads: int
  sr_ratio: int = 1
  impl: str = 'xla'
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    batch, length, dim = x.shape
    heads, head_dim = self.num_heads, dim // self.num_heads
    dtype = self.dtype or x.dtype

    def proj(name, inputs):
      w = self.param(f'{name}_kernel', layers.with_axes(init, ('embed', 'heads', 'kv')), (dim, heads, head_dim))
      b = self.param(f'{name}_bias', layers.with_axes(nn.initializers.zeros, ('heads', 'kv')), (heads, head_dim))
      return jnp.einsum('bnd,dhk->bnhk', inputs.astype(dtype), w.astype(dtype)) + b.astype(dtype)

    q = proj('query', x)
    if self.sr_ratio > 1:
      n = self.sr_ratio ** 2
      if length < n:
        raise ConfigError(f'Next-ViT: {length} tokens cannot be pooled {n} at a time; use a larger image size')
      x = x[:, :length // n * n].reshape(batch, length // n, n, dim).mean(axis=2)
      x = batch_norm(train, self.dtype, 'norm')(x)
    out = kernels.attention(q, proj('key', x), proj('value', x), impl=self.impl)
    w = self.param('out_kernel', layers.with_axes(init, ('heads', 'kv', 'embed')), (heads, head_dim, dim))
    b = self.param('out_bias', layers.with_axes(nn.initializers.zeros, ('embed',)), (dim,))
    return jnp.einsum('bnhk,hkd->bnd', out, w.astype(dtype)) + b.astype(dtype)


mixers.register_token_mixer('mhca', lambda *, num_heads, grid, prefix, dtype, name, **_: ConvAttention(
    num_heads, grid, prefix, dtype, name=name))
mixers.register_token_mixer('e_mhsa', lambda *, num_heads, impl, dtype, name, sr_ratio=1, **_: EfficientAttention(
    num_heads, sr_ratio, impl, dtype, name=name))


def token_mixer(x: jax.Array, train: bool, mixer: str, default: tuple[str, str], head_dim: int, impl: str,
                dtype: Any, options: Any) -> jax.Array:
  """`mixer` of `models/mixers.py` on the NHWC map; named `default[0]` when it is that mixer (timm's layout), else
  `default[1]`."""
  b, h, w, c = x.shape
  module = mixers.token_mixer(mixer, dim=c, num_heads=max(1, c // head_dim), grid=(h, w), impl=impl, dtype=dtype,
                              module_name=default[0] if mixer == default[0] else default[1],
                              **mixers.select_options(mixer, options))
  return module(x.reshape(b, h * w, c), train=train).reshape(x.shape)


class NextConvBlock(nn.Module):
  """NCB: patch embed → x + MHCA(x) → x + MLP(BN(x)) (hidden ×3). `mixers`: its token mixer (one)."""
  features: int
  stride: int = 1
  head_dim: int = 32
  drop_path: float = 0.0
  dtype: Any = None
  mixers: Sequence[str] = ('mhca',)
  mixer_options: Any = None
  attn_impl: str = 'xla'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = PatchEmbed(self.features, self.stride, self.dtype, name='patch_embed')(x, train)
    y = token_mixer(x, train, self.mixers[0], ('mhca', 'mixer'), self.head_dim, self.attn_impl, self.dtype,
                    self.mixer_options)
    x = x + layers.DropPath(self.drop_path)(y, train)
    y = ConvMlp(self.features * 3, self.dtype, name='mlp')(batch_norm(train, self.dtype, 'norm')(x))
    return x + layers.DropPath(self.drop_path)(y, train)


class NextTransformerBlock(nn.Module):
  """NTB: patch embed to ¾ width → x + E-MHSA(BN(x)); 1×1 projection to the other ¼ → y + MHCA(y); concat →
  x + MLP(BN(x)) (hidden ×2). Drop path: ¾ of the rate on the attention, ¼ on the MHCA (timm's mix ratio).
  `mixers`: its two token mixers (in place of E-MHSA, MHCA)."""
  features: int
  stride: int = 1
  head_dim: int = 32
  sr_ratio: int = 1
  drop_path: float = 0.0
  mix_ratio: float = 0.75
  attn_impl: str = 'xla'
  dtype: Any = None
  mixers: Sequence[str] = ('e_mhsa', 'mhca')
  mixer_options: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    mhsa_dim = make_divisible(int(self.features * self.mix_ratio), 32)
    x = PatchEmbed(mhsa_dim, self.stride, self.dtype, name='patch_embed')(x, train)
    options = {'sr_ratio': self.sr_ratio, **dict(self.mixer_options or {})}
    mix = lambda y, i, names: token_mixer(y, train, self.mixers[i], names, self.head_dim,  # noqa: E731
                                          self.attn_impl, self.dtype, options)
    y = mix(batch_norm(train, self.dtype, 'norm1')(x), 0, ('e_mhsa', 'mixer'))
    x = x + layers.DropPath(self.drop_path * self.mix_ratio)(y, train)
    y = PatchEmbed(self.features - mhsa_dim, 1, self.dtype, name='projection')(x, train)
    y = y + layers.DropPath(self.drop_path * (1 - self.mix_ratio))(mix(y, 1, ('mhca', 'mixer_conv')), train)
    x = jnp.concatenate([x, y], axis=-1)
    y = ConvMlp(self.features * 2, self.dtype, name='mlp')(batch_norm(train, self.dtype, 'norm2')(x))
    return x + layers.DropPath(self.drop_path)(y, train)


class NextViT(nn.Module):
  """Next-ViT classifier; `num_classes=0` returns the pooled features. Stage widths and block kinds follow from
  `depths` (timm's hybrid strategy); stochastic depth grows linearly from 0 to `drop_path` over all blocks.

  Token mixers (`models/mixers.py`): an NCB has one (`mhca`), an NTB two (`e_mhsa` on the attention path, `mhca` on
  the convolution path). `mixer` (default None: those) is one name for every mixer of every block; `mixer_overrides`
  maps global block ranges to a name (all mixers of those blocks) or one name per mixer of the block
  (`{'3:7': 'dwconv', '-1': ('attention', 'mhca')}`); `mixer_options` their options (the model gives `sr_ratio`,
  the stage's). Attention mixers get dim // head_dim heads."""
  num_classes: int = 1000
  depths: Sequence[int] = (3, 4, 10, 3)
  stem_dims: Sequence[int] = (64, 32, 64)
  strides: Sequence[int] = (1, 2, 2, 2)
  sr_ratios: Sequence[int] = SR_RATIOS
  head_dim: int = 32
  drop_path: float = 0.0
  attn_impl: str = 'xla'
  remat: bool = False
  dtype: Any = None
  mixer: str | None = None
  mixer_overrides: Any = None
  mixer_options: Any = None

  def block_mixers(self) -> list[list[tuple[str, ...]]]:
    """The token mixers of every block, per stage."""
    stages, total = hybrid_layout(self.depths), sum(self.depths)
    out, index = [], 0
    for blocks in stages:
      out.append([])
      for kind, _ in blocks:
        value = mixers.mixer_for_layer(self.mixer, self.mixer_overrides, index, total)
        default = ('mhca',) if kind == 'ncb' else ('e_mhsa', 'mhca')
        out[-1].append(default if value is None else mixers.block_mixers(value, len(default),
                                                                          f'Next-ViT block {index} ({kind}) mixer'))
        index += 1
    mixers.check_options({n for stage in out for names in stage for n in names}, self.mixer_options)
    return out

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    s = self.stem_dims
    x = images
    for i, (dim, stride) in enumerate(zip((s[0], s[1], s[2], s[2]), (2, 1, 1, 2))):
      x = nn.Conv(dim, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                  kernel_init=layers.with_axes(init, (None, None, 'conv_in', 'conv_out')), name=f'stem_{i}_conv')(x)
      x = nn.relu(batch_norm(train, self.dtype, f'stem_{i}_norm')(x))

    stages, names = hybrid_layout(self.depths), self.block_mixers()
    ncb = nn.remat(NextConvBlock, static_argnums=(2,)) if self.remat else NextConvBlock
    ntb = nn.remat(NextTransformerBlock, static_argnums=(2,)) if self.remat else NextTransformerBlock
    total, index = sum(self.depths), 0
    for i, blocks in enumerate(stages):
      for j, (kind, dim) in enumerate(blocks):
        stride = self.strides[i] if j == 0 else 1
        rate = self.drop_path * index / max(total - 1, 1)
        name = f'stages_{i}_blocks_{j}'
        options = {'sr_ratio': self.sr_ratios[i], **dict(self.mixer_options or {})}  # E-MHSA anywhere: the stage's.
        if kind == 'ncb':
          x = ncb(dim, stride, self.head_dim, rate, self.dtype, names[i][j], options, self.attn_impl,
                  name=name)(x, train)
        else:
          x = ntb(dim, stride, self.head_dim, self.sr_ratios[i], rate, attn_impl=self.attn_impl, dtype=self.dtype,
                  mixers=names[i][j], mixer_options=options, name=name)(x, train)
        x = layers.constrain(x, ('batch', None, None, 'act_embed'))
        index += 1

    x = batch_norm(train, self.dtype, 'norm')(x).mean(axis=(1, 2))
    if not self.num_classes:
      return x
    return layers.dense(self.num_classes, ('embed', 'classes'), kernel_init=init, dtype=self.dtype,
                        name='head')(x).astype(jnp.float32)


register('nextvit', NextViT)
for _size, _depths in DEPTHS.items():
  register(f'nextvit_{_size}', NextViT, depths=_depths)
