"""The token and channel mixers behind `models/mixers.py`'s registry, on tokens `[batch, prefix + h·w, dim]`.

Prefix tokens (class / distillation tokens) have no grid position. Local attention lets them attend globally
(every token, prefix included) while grid tokens attend within their window or dilated grid only. Convolution and
pooling mixers give them the grid mean of their spatial operator's output, a global pool (like
`hyena.HyenaMixer2D`), so a class token still gathers the image; pointwise layers treat them as any token.
"""
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision_models import kernels
from vision_models.errors import ConfigError
from vision_models.models import layers

conv_init = layers.trunc_normal(0.02)


def split_grid(x: jax.Array, grid: tuple[int, int] | None, prefix: int) -> tuple[jax.Array, jax.Array]:
  """Tokens `[batch, prefix + h·w, ...]` → (prefix tokens, grid `[batch, h, w, ...]`)."""
  if grid is None or prefix + grid[0] * grid[1] != x.shape[1]:
    raise ConfigError(f'token mixer got {x.shape[1]} tokens for grid {grid} and {prefix} prefix tokens; the model '
                      f'must pass its grid (h, w) and prefix count')
  return x[:, :prefix], x[:, prefix:].reshape(x.shape[0], *grid, *x.shape[2:])


def join_grid(front: jax.Array, g: jax.Array) -> jax.Array:
  return jnp.concatenate([front, g.reshape(g.shape[0], -1, *g.shape[3:])], axis=1)


def on_grid(x: jax.Array, grid: tuple[int, int] | None, prefix: int,
            fn: Callable[[jax.Array], jax.Array]) -> jax.Array:
  """`fn` (NHWC → NHWC) on the grid tokens; prefix tokens get the grid mean of `fn`'s output (a global pool that
  vanishes with the operator's weights, so a zeroed conv is a zero mixer for every token)."""
  front, g = split_grid(x, grid, prefix)
  out = fn(g)
  return join_grid(jnp.broadcast_to(out.mean(axis=(1, 2))[:, None], (*front.shape[:2], out.shape[-1])), out)


def default_conv_impl(impl: str) -> str:
  """A conv mixer's implementation when a model gives only its attention `impl`: `pallas` stays, `xla` / `cudnn`
  become `auto` (XLA's grouped conv on accelerators, the much faster shifted products on the CPU)."""
  return 'auto' if impl in ('xla', 'cudnn') else impl


def conv_impl(impl: str) -> str:
  """The depthwise-conv implementation a model's `impl` (attention or depthwise names) stands for."""
  impl = {'cudnn': 'xla'}.get(impl, impl)
  if impl not in layers.DEPTHWISE_IMPLS:
    raise ConfigError(f'unknown convolution impl {impl!r} for a conv mixer; choose one of '
                      f'{", ".join(layers.DEPTHWISE_IMPLS)} (mixer_options conv_impl=...)')
  return impl


class Identity(nn.Module):
  """No token mixing (the "identity" ablation of MetaFormer)."""

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return x


class LocalAttention(layers.Attention):
  """Attention within non-overlapping `window` x `window` windows of the grid (Swin-style, no shift) or, with
  `dilated`, within MaxViT's `window` x `window` grid of tokens spaced h/window apart. A grid not divisible by the
  window is padded at its end and the padding masked out; the window shrinks to the grid when larger. Prefix tokens
  attend to every token; grid tokens see no prefix token. A `bias` (relative position bias) is `[1, heads, L, L]`
  over the L = wh·ww tokens of a window, the same for every window. Same parameters as `layers.Attention`."""
  grid: tuple[int, int] | None = None
  prefix: int = 0
  window: int = 7
  dilated: bool = False

  def window_shape(self) -> tuple[int, int]:
    if self.grid is None:
      raise ConfigError('local attention needs the grid (h, w) of its tokens')
    return min(self.window, self.grid[0]), min(self.window, self.grid[1])

  def attend(self, q, k, v, bias):
    batch, prefix = q.shape[0], self.prefix
    (fq, gq), (_, gk), (_, gv) = (split_grid(t, self.grid, prefix) for t in (q, k, v))
    gh, gw = self.grid
    wh, ww = self.window_shape()
    hp, wp = -(-gh // wh) * wh, -(-gw // ww) * ww
    pad = lambda t: jnp.pad(t, ((0, 0), (0, hp - gh), (0, wp - gw), (0, 0), (0, 0)))  # noqa: E731
    perm = (0, 2, 4, 1, 3) if self.dilated else (0, 1, 3, 2, 4)
    shape = (wh, hp // wh, ww, wp // ww) if self.dilated else (hp // wh, wh, wp // ww, ww)

    inverse = tuple(np.argsort(perm))

    def part(t):  # [b, hp, wp, ...] → [b · groups, wh · ww, ...]
      t = t.reshape(t.shape[0], *shape, *t.shape[3:])
      return t.transpose(*perm, *range(5, t.ndim)).reshape(-1, wh * ww, *t.shape[5:])

    mask = None
    if (hp, wp) != (gh, gw):
      valid = part(jnp.pad(jnp.ones((1, gh, gw), bool), ((0, 0), (0, hp - gh), (0, wp - gw))))
      mask = jnp.tile(jnp.where(valid, 0.0, -1e9)[:, None, None], (batch, 1, 1, 1))
      bias = mask if bias is None else bias + mask.astype(bias.dtype)
    out = kernels.attention(part(pad(gq)), part(pad(gk)), part(pad(gv)), bias=bias, impl=self.impl)
    out = out.reshape(batch, *(shape[p - 1] for p in perm[1:]), *out.shape[2:])
    out = out.transpose(*inverse, *range(5, out.ndim)).reshape(batch, hp, wp, *out.shape[5:])
    out = out[:, :gh, :gw]
    front = kernels.attention(fq, k, v, impl=self.impl) if prefix else fq
    return join_grid(front, out)


def relative_position_index(height: int, width: int, window: int) -> tuple[np.ndarray, np.ndarray]:
  """Row and column indices `[h·w, h·w]` into a (2·window − 1)² table: key minus query offset, shifted by
  window − 1, for the tokens of an h x w window (h, w ≤ window) in row-major order."""
  coords = np.stack(np.meshgrid(np.arange(height), np.arange(width), indexing='ij')).reshape(2, -1)
  rows, cols = coords[:, None, :] - coords[:, :, None] + window - 1
  return rows, cols


class RelPosLocalAttention(nn.Module):
  """`LocalAttention` (submodule `attn`) with a learned relative position bias `relative_position_bias_table`
  `[heads, 2·window − 1, 2·window − 1]`, the same in every window (Swin / MaxViT): MaxViT's block (`dilated=False`)
  and grid (`dilated=True`) attention. Options as `LocalAttention`."""
  num_heads: int
  grid: tuple[int, int] | None = None
  prefix: int = 0
  window: int = 7
  dilated: bool = False
  qkv_bias: bool = True
  dropout: float = 0.0
  impl: str = 'xla'
  qkv_init: Any = None
  qk_norm: str | None = None
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    attn = LocalAttention(self.num_heads, qkv_bias=self.qkv_bias, dropout=self.dropout, impl=self.impl,
                          dtype=self.dtype, qkv_init=self.qkv_init, qk_norm=self.qk_norm, grid=self.grid,
                          prefix=self.prefix, window=self.window, dilated=self.dilated, name='attn')
    w = self.window
    table_init = layers.with_axes(nn.initializers.normal(0.02), ('heads', None, None))
    table = self.param('relative_position_bias_table', table_init, (self.num_heads, 2 * w - 1, 2 * w - 1))
    rows, cols = relative_position_index(*attn.window_shape(), w)
    dtype = self.dtype or x.dtype
    return attn(x, bias=table[:, rows, cols][None].astype(dtype), train=train)


class LinearAttention(layers.Attention):
  """Linear attention (Katharopoulos et al. 2020): softmax(q kᵀ) v replaced by φ(q) (φ(k)ᵀ v) / φ(q) Σφ(k) with
  φ = elu + 1, O(length) in time and memory; every token (prefix included) sees every token. Same parameters as
  `layers.Attention`."""
  eps: float = 1e-6

  def attend(self, q, k, v, bias):
    if bias is not None:
      raise ConfigError('linear attention takes no attention bias')
    phi = lambda t: nn.elu(t.astype(jnp.float32)) + 1  # noqa: E731  (float32: the sums grow with the length)
    q, k = phi(q), phi(k)
    kv = jnp.einsum('blhd,blhe->bhde', k, v.astype(jnp.float32))
    norm = jnp.einsum('blhd,bhd->blh', q, k.sum(axis=1))
    return (jnp.einsum('blhd,bhde->blhe', q, kv) / (norm[..., None] + self.eps)).astype(v.dtype)


class Pooling(nn.Module):
  """PoolFormer's token mixer: 3x3 average pool (stride 1, padding not counted) minus the input."""
  grid: tuple[int, int] | None = None
  prefix: int = 0
  pool_size: int = 3

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    k = self.pool_size
    pool = lambda g: nn.avg_pool(g, (k, k), (1, 1), 'SAME', count_include_pad=False)  # noqa: E731
    return on_grid(x, self.grid, self.prefix, pool) - x


class DWConv(nn.Module):
  """Depthwise k x k convolution ('same', bias) with `nn.Conv`'s parameters `kernel (k, k, 1, dim)` and `bias`
  (ConvNeXt's `conv_dw`); `impl` as `layers.depthwise_conv` (`pallas` for large kernels on GPUs)."""
  grid: tuple[int, int] | None = None
  prefix: int = 0
  kernel_size: int = 7
  use_bias: bool = True
  impl: str = 'auto'
  axis_name: str = 'embed'
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dim, dtype = x.shape[-1], self.dtype or x.dtype
    kernel = self.param('kernel', layers.with_axes(conv_init, (None, None, None, self.axis_name)),
                        (self.kernel_size, self.kernel_size, 1, dim)).astype(dtype)
    y = on_grid(x.astype(dtype), self.grid, self.prefix,
                lambda g: layers.depthwise_conv(g, kernel, impl=conv_impl(self.impl)))
    if self.use_bias:
      y = y + self.param('bias', layers.with_axes(nn.initializers.zeros, (self.axis_name,)), (dim,)).astype(dtype)
    return y


def _dw(kernel: tuple[int, int], impl: str, dtype: Any, name: str, use_bias: bool = True) -> layers.DepthwiseConv:
  # The Pallas kernel takes only 'SAME' stride 1, which every mixer here uses.
  return layers.DepthwiseConv(kernel, use_bias=use_bias, kernel_init=conv_init, impl=conv_impl(impl),
                              axis_name='embed', dtype=dtype, name=name)


class InceptionDWConv(nn.Module):
  """InceptionNeXt's token mixer: channels split into identity / square k x k / 1 x band / band x 1 depthwise
  convolutions, `int(dim · branch_ratio)` channels per conv branch, the identity first (timm's split and names)."""
  grid: tuple[int, int] | None = None
  prefix: int = 0
  square_kernel_size: int = 3
  band_kernel_size: int = 11
  branch_ratio: float = 0.125
  impl: str = 'auto'
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dim, sq, band = x.shape[-1], self.square_kernel_size, self.band_kernel_size
    gc = int(dim * self.branch_ratio)
    convs = (_dw((sq, sq), self.impl, self.dtype, 'dwconv_hw'), _dw((1, band), self.impl, self.dtype, 'dwconv_w'),
             _dw((band, 1), self.impl, self.dtype, 'dwconv_h'))

    def mix(g):
      keep, *parts = jnp.split(g, np.cumsum([dim - 3 * gc, gc, gc]), axis=-1)
      mixed = [conv(p) for conv, p in zip(convs, parts)]
      return jnp.concatenate([keep.astype(mixed[0].dtype), *mixed], axis=-1)

    return on_grid(x, self.grid, self.prefix, mix)


class StarReLU(nn.Module):
  """s · relu(x)² + b with learned scalars s, b (MetaFormer)."""
  scale_value: float = 1.0
  bias_value: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param('scale', layers.with_axes(nn.initializers.constant(self.scale_value), (None,)), (1,))
    bias = self.param('bias', layers.with_axes(nn.initializers.constant(self.bias_value), (None,)), (1,))
    return scale.astype(x.dtype) * jnp.square(nn.relu(x)) + bias.astype(x.dtype)


class SepConv(nn.Module):
  """ConvFormer's token mixer (inverted separable conv): pointwise expansion → StarReLU → depthwise k x k →
  pointwise projection, no biases (timm's `SepConv` names: pwconv1, act1, dwconv, pwconv2)."""
  grid: tuple[int, int] | None = None
  prefix: int = 0
  expansion_ratio: float = 2.0
  kernel_size: int = 7
  impl: str = 'auto'
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dim, k = x.shape[-1], self.kernel_size
    y = layers.dense(int(self.expansion_ratio * dim), ('embed', 'mlp'), use_bias=False, kernel_init=conv_init,
                     dtype=self.dtype, name='pwconv1')(x)
    y = StarReLU(name='act1')(y)
    conv = layers.DepthwiseConv((k, k), use_bias=False, kernel_init=conv_init, impl=conv_impl(self.impl),
                                axis_name='mlp', dtype=self.dtype, name='dwconv')
    y = on_grid(y, self.grid, self.prefix, conv)
    return layers.dense(dim, ('mlp', 'embed'), use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                        name='pwconv2')(y)


class GatedConv(nn.Module):
  """Gated depthwise convolution: one projection split into gate and value, value through a depthwise k x k conv,
  out_proj(gelu(gate) · dwconv(value)) (the gating of gMLP / Conv2Former's convolutional modulation)."""
  grid: tuple[int, int] | None = None
  prefix: int = 0
  kernel_size: int = 7
  impl: str = 'auto'
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dim, k = x.shape[-1], self.kernel_size
    gate, value = jnp.split(layers.dense(2 * dim, ('embed', 'mlp'), dtype=self.dtype, name='in_proj')(x), 2, -1)
    conv = layers.DepthwiseConv((k, k), kernel_init=conv_init, impl=conv_impl(self.impl), axis_name='mlp',
                                dtype=self.dtype, name='dwconv')
    y = layers.gelu(gate) * on_grid(value, self.grid, self.prefix, conv)
    return layers.dense(dim, ('mlp', 'embed'), dtype=self.dtype, name='out_proj')(y)


class SwiGLU(nn.Module):
  """Gated MLP (Shazeer 2020): fc2(silu(fc1_gate(x)) · fc1(x))."""
  hidden_dim: int
  dropout: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    gate = layers.dense(self.hidden_dim, dtype=self.dtype, name='fc1_gate')(x)
    hidden = layers.dense(self.hidden_dim, dtype=self.dtype, name='fc1')(x)
    y = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(gate) * hidden)
    y = layers.dense(x.shape[-1], ('mlp', 'embed'), dtype=self.dtype, name='fc2')(y)
    return nn.Dropout(self.dropout, deterministic=not train)(y)
