"""Hyena token mixers (Poli et al. 2023): gated long convolutions with implicit filters, 1-D and 2-D (Hyena N-D).

`HyenaMixer` takes tokens [batch, length, dim] like `layers.Attention`:
  1. input projection to order+1 branches (x_1 .. x_{order-1} gates, x_0 the output gate, v the value),
  2. a short depthwise convolution (kernel 3) along the sequence on every branch,
  3. for each remaining gate: v ← long_conv(v · x_i, h_i) + D_i·v, with the filter h_i implicit: positional features
     of the filter offset (t, cos, sin bands) through a small MLP with sin activations, times an exponential decay
     window exp(−|t|·δ_c) whose rate δ_c runs over the channels from slow to fast (safari's defaults),
  4. y = v · x_0 and an output projection.
Non-causal mixers (vision) use a centred filter of length 2L − 1, so every token sees every other one.

`HyenaMixer2D` treats the tokens as an h x w grid (plus leading prefix tokens such as ViT's class token): a 3x3
depthwise short convolution and a 2-D implicit filter of (2h − 1) x (2w − 1) applied by `kernels.long_conv2d`. Prefix
tokens have no grid position: their long-convolution output is the mean of v over the grid (a global pool).

`impl` picks the convolution: `pallas` (the fused Monarch FFT kernel), `xla` (`jnp.fft`), `direct`
(`lax.conv_general_dilated`); attention names map over (`cudnn` → xla, `auto` → pallas on GPU/TPU, else xla), so a
model's `attn_impl` can be passed straight through. Models build them by name (`hyena`, `hyena2d`) through
`models/mixers.py`.
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision_models import kernels
from vision_models.errors import ConfigError
from vision_models.models import layers

DECAY = (0.3, 1.5, 1e-2)  # fast_decay_pct, slow_decay_pct, target (safari's ExponentialModulation)


def conv_impl(impl: str) -> str:
  """The long-convolution implementation an attention-style `impl` name stands for."""
  if impl in ('pallas', 'direct'):
    return impl
  if impl == 'auto':
    return 'pallas' if jax.default_backend() in ('gpu', 'tpu') else 'xla'
  if impl in ('xla', 'cudnn'):
    return 'xla'
  raise ConfigError(f"unknown hyena impl {impl!r}; choose 'xla', 'direct', 'pallas' or 'auto'")


def positional_features(offsets: np.ndarray, scale: int, emb_dim: int) -> np.ndarray:
  """[n, emb_dim] features of filter offsets: t = offset/scale, then cos and sin of (emb_dim − 1)//2 bands."""
  if emb_dim < 3 or emb_dim % 2 == 0:
    raise ConfigError(f'hyena filter emb_dim must be odd and >= 3, got {emb_dim}')
  bands = (emb_dim - 1) // 2
  freqs = np.linspace(1e-4, bands - 1, bands)
  angle = 2 * np.pi * offsets[:, None] * freqs[None] / scale
  return np.concatenate([offsets[:, None] / scale, np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)


def decay_rates(channels: int) -> np.ndarray:
  """Per-channel decay rates δ from slow to fast: exp(−δ·t) reaches `target` at t = slow_pct .. fast_pct."""
  fast, slow, target = DECAY
  return np.linspace(-np.log(target) / slow, -np.log(target) / fast, channels).astype(np.float32)


class ImplicitFilter(nn.Module):
  """h(offset) = MLP(features(offset)) · exp(−|t|·δ_c): [n, features] → [n, groups, channels] in float32."""
  groups: int
  channels: int
  width: int = 64
  depth: int = 2  # hidden sin layers after the first

  @nn.compact
  def __call__(self, features: np.ndarray, distance: np.ndarray) -> jax.Array:
    h = jnp.asarray(features)
    for i in range(self.depth + 1):
      h = layers.dense(self.width, (None, None), name=f'fc{i}')(h)
      freq = self.param(f'freq{i}', layers.with_axes(nn.initializers.ones, (None,)), (self.width,))
      h = jnp.sin(freq * h)
    out = self.param('out_kernel', layers.with_axes(nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2)),
                                                    (None, None, 'mlp')), (self.width, self.groups, self.channels))
    h = jnp.einsum('nw,wgc->ngc', h, out)
    return h * jnp.exp(-np.abs(distance)[:, None, None] * decay_rates(self.channels))


class _Gated(nn.Module):
  """What both mixers share: projections, the gating recursion and the output projection.

  Subclasses pass `short_conv(z, kernel)` on the branches [batch, length, branches, dim] and `long_conv(v, h)`.
  """
  order: int = 2
  filter_width: int = 64
  emb_dim: int = 33
  short_kernel: int = 3
  impl: str = 'xla'
  dropout: float = 0.0
  dtype: Any = None

  def _param(self, name: str, shape: tuple[int, ...], axes: tuple[str | None, ...], init: Callable, dtype):
    return self.param(name, layers.with_axes(init, axes), shape).astype(dtype)

  def _mix(self, x: jax.Array, short_shape: tuple[int, ...], filters: Callable[[], jax.Array],
           short_conv: Callable[..., jax.Array], long_conv: Callable[..., jax.Array], train: bool) -> jax.Array:
    if self.order < 2:
      raise ConfigError(f'hyena order must be >= 2, got {self.order}')
    dim, branches, dtype = x.shape[-1], self.order + 1, self.dtype or x.dtype
    w_in = self._param('in_kernel', (dim, branches, dim), ('embed', None, 'mlp'),
                       nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform', in_axis=0, out_axis=(1, 2)), dtype)
    z = jnp.einsum('bld,dkc->blkc', x.astype(dtype), w_in)
    z = z + self._param('in_bias', (branches, dim), (None, 'mlp'), nn.initializers.zeros, dtype)
    bound = 1.0 / np.sqrt(np.prod(short_shape))  # PyTorch's Conv1d/Conv2d default for a depthwise kernel.
    short = self._param('short_kernel', short_shape + (branches, dim), (None,) * len(short_shape) + (None, 'mlp'),
                        lambda key, shape, dt=jnp.float32: jax.random.uniform(key, shape, dt, -bound, bound), dtype)
    z = short_conv(z, short)
    gate_out, gates, v = z[:, :, 0], [z[:, :, i] for i in range(1, self.order)], z[:, :, -1]
    h = filters()
    skip = self._param('filter_bias', (self.order - 1, dim), (None, 'mlp'), nn.initializers.normal(1.0), dtype)
    for i, gate in enumerate(reversed(gates)):
      v = v * gate
      v = long_conv(v, h[..., i, :]) + v * skip[i]
    y = layers.constrain(v * gate_out, ('batch', 'length', 'act_mlp'))
    w_out = self._param('out_kernel', (dim, dim), ('mlp', 'embed'), nn.initializers.xavier_uniform(), dtype)
    y = y @ w_out + self._param('out_bias', (dim,), ('embed',), nn.initializers.zeros, dtype)
    return nn.Dropout(self.dropout, deterministic=not train)(y)


class HyenaMixer(_Gated):
  """1-D Hyena operator on tokens [batch, length, dim]; `causal` for autoregressive use, centred otherwise."""
  causal: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    length, dim = x.shape[1:]
    klen = length if self.causal else 2 * length - 1
    offsets = np.arange(klen) - (0 if self.causal else klen // 2)
    filt = ImplicitFilter(self.order - 1, dim, self.filter_width, name='filter')
    return self._mix(x, (self.short_kernel,),
                     lambda: filt(positional_features(offsets, length, self.emb_dim), offsets / length),
                     self._short_conv, self._long_conv, train)

  def _short_conv(self, z, kernel):
    klen, length = kernel.shape[0], z.shape[1]
    shift = 0 if self.causal else klen // 2
    zp = jnp.pad(z, ((0, 0), (klen - 1 - shift, shift), (0, 0), (0, 0)))
    return sum(kernel[s] * zp[:, klen - 1 - s:klen - 1 - s + length] for s in range(klen))

  def _long_conv(self, v, h):
    impl = conv_impl(self.impl)
    fn = {'pallas': kernels.long_conv, 'xla': kernels.long_conv_fft, 'direct': kernels.long_conv_direct}[impl]
    return fn(v, h, causal=self.causal)


class HyenaMixer2D(_Gated):
  """Hyena N-D on image tokens [batch, prefix + h·w, dim] laid out row-major on an h x w grid.

  `grid=None` infers a square grid with 0 or 1 prefix tokens from the length.
  """
  grid: tuple[int, int] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    length, dim = x.shape[1:]
    (gh, gw), prefix = self._grid(length)
    oy, ox = np.meshgrid(np.arange(-(gh - 1), gh), np.arange(-(gw - 1), gw), indexing='ij')
    oy, ox = oy.ravel(), ox.ravel()
    filt = ImplicitFilter(self.order - 1, dim, self.filter_width, name='filter')

    def filters():
      feats = np.concatenate([positional_features(oy, gh, self.emb_dim), positional_features(ox, gw, self.emb_dim)], 1)
      h = filt(feats, np.sqrt((oy / gh) ** 2 + (ox / gw) ** 2))
      return h.reshape(2 * gh - 1, 2 * gw - 1, self.order - 1, dim)

    split = functools.partial(_split, shape=(gh, gw, prefix))
    return self._mix(x, (self.short_kernel, self.short_kernel), filters,
                     functools.partial(_short_conv2d, split=split), functools.partial(self._long_conv, split=split),
                     train)

  def _grid(self, length: int) -> tuple[tuple[int, int], int]:
    if self.grid is not None:
      prefix = length - self.grid[0] * self.grid[1]
      if prefix < 0:
        raise ConfigError(f'HyenaMixer2D: {length} tokens cannot hold a {self.grid} grid')
      return tuple(self.grid), prefix
    for prefix in (0, 1):
      side = int(round(np.sqrt(length - prefix)))
      if side * side == length - prefix:
        return (side, side), prefix
    raise ConfigError(f'HyenaMixer2D: {length} tokens are not a square grid (plus one class token); set grid=(h, w)')

  def _long_conv(self, v, h, split):
    front, g = split(v)
    impl = conv_impl(self.impl)
    fn = {'pallas': kernels.long_conv2d, 'xla': kernels.long_conv2d_fft, 'direct': kernels.long_conv2d_direct}[impl]
    mixed = fn(g, h)
    pooled = jnp.broadcast_to(g.mean(axis=(1, 2), keepdims=True)[:, 0], front.shape).astype(v.dtype)
    return _join(pooled, mixed)


def _split(z: jax.Array, shape: tuple[int, int, int]) -> tuple[jax.Array, jax.Array]:
  """Tokens [batch, prefix + h·w, ...] → prefix tokens and the grid [batch, h, w, ...]."""
  gh, gw, prefix = shape
  return z[:, :prefix], z[:, prefix:].reshape(z.shape[0], gh, gw, *z.shape[2:])


def _join(prefix_part: jax.Array, grid_part: jax.Array) -> jax.Array:
  flat = grid_part.reshape(grid_part.shape[0], -1, *grid_part.shape[3:])
  return jnp.concatenate([prefix_part, flat], axis=1)


def _short_conv2d(z: jax.Array, kernel: jax.Array, split: Callable) -> jax.Array:
  """Centred k x k depthwise convolution of the grid tokens (prefix tokens pass through)."""
  front, g = split(z)
  k, (gh, gw) = kernel.shape[0], g.shape[1:3]
  lo = k // 2
  gp = jnp.pad(g, ((0, 0), (k - 1 - lo, lo), (k - 1 - lo, lo), (0, 0), (0, 0)))
  out = sum(kernel[p, q] * gp[:, k - 1 - p:k - 1 - p + gh, k - 1 - q:k - 1 - q + gw]
            for p in range(k) for q in range(k))
  return _join(front, out)

