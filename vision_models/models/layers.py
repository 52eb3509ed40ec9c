"""Building blocks shared by every family: dense layers with logical axes, MLP, attention, drop path, norms,
position embeddings.

Every parameter is created through `param_with_axes`-style initialisers (`nn.with_logical_partitioning`), so it carries
logical axis names (`embed`, `mlp`, `heads`, `kv`, `conv_in`, `conv_out`, `classes`, ...). The rules table of the config
(`vision_models.parallel.rules`) maps those names to mesh axes; without a mesh they cost nothing.
"""
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vision_models import kernels
from vision_models.errors import ConfigError
from vision_models.models import cpu_dot, gelu_tail, qkv, shift_conv
from vision_models.models.layer_norm import FusedLayerNorm, LayerNorm

Dtype = Any
Init = Callable[..., jax.Array]

trunc_normal = nn.initializers.truncated_normal  # timm's trunc_normal_(std) truncates at ±2 absolute, close enough.


def with_axes(init: Init, axes: Sequence[str | None]) -> Init:
  """An initialiser whose parameter carries logical axis names."""
  return nn.with_logical_partitioning(init, tuple(axes))


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical axis names (a no-op without rules and mesh)."""
  return nn.with_logical_constraint(x, tuple(axes))


_DENSE_KERNEL_INIT = nn.initializers.xavier_uniform()


def dense(features: int, axes: tuple[str | None, str | None] = ('embed', 'mlp'), *, use_bias: bool = True,
          kernel_init: Init = _DENSE_KERNEL_INIT, bias_init: Init = nn.initializers.zeros,
          dtype: Dtype | None = None, name: str | None = None) -> nn.Dense:
  """`nn.Dense` whose kernel and bias carry logical axes `(in_axis, out_axis)`."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name, dot_general=cpu_dot.dot_general,
                  kernel_init=with_axes(kernel_init, axes), bias_init=with_axes(bias_init, axes[-1:]))


KERNEL_IMPLS = ('auto', 'xla', 'pallas')


def layer_norm(epsilon: float = 1e-6, axis_name: str | None = 'embed', *, use_bias: bool = True,
               dtype: Dtype | None = None, name: str | None = None, impl: str = 'auto') -> nn.Module:
  """LayerNorm over the last axis with a logically named scale and bias (eps is per family: 1e-6 ViT, 1e-5 MaxViT).

  `impl='xla'`: on the CPU our `LayerNorm` with its closed-form backward; elsewhere Flax's, with the same parameters:
  on an H100 ours made ViT-B/16's bfloat16 train step 7.4 ms slower (85.4 against 78.0 ms, benchmarks/RESULTS.md).
  `impl='pallas'`: `FusedLayerNorm` (one pass each way; `add_layer_norm` fuses the residual add). `auto` is `xla`
  here; a family that takes the kernels on one GPU resolves it first with `kernel_default` (ViT does)."""
  kernel_default(impl)  # checks the name, and that a Pallas kernel can run on this backend
  module = FusedLayerNorm if impl == 'pallas' else LayerNorm if jax.default_backend() == 'cpu' else nn.LayerNorm
  return module(epsilon=epsilon, use_bias=use_bias, dtype=dtype, name=name,
                scale_init=with_axes(nn.initializers.ones, (axis_name,)),
                bias_init=with_axes(nn.initializers.zeros, (axis_name,)))


def kernel_default(impl: str) -> str:
  """`impl` ('auto', 'xla' or 'pallas'), with `auto` resolved to the Pallas kernels on one GPU and to XLA elsewhere.
  (Several devices: a Pallas call is opaque to XLA's partitioner, which would gather its sharded inputs whole.)"""
  if impl not in KERNEL_IMPLS:
    raise ConfigError(f'unknown kernel impl {impl!r}; choose one of {", ".join(KERNEL_IMPLS)}')
  if impl == 'pallas' and jax.default_backend() == 'tpu':
    raise ConfigError("kernel impl 'pallas' names Triton (GPU) kernels; on TPUs use 'xla' or 'auto'")
  if impl != 'auto':
    return impl
  mesh = jax.sharding.get_abstract_mesh()
  return 'pallas' if jax.default_backend() == 'gpu' and (mesh.empty or mesh.size == 1) else 'xla'


def add_layer_norm(x: jax.Array, residual: jax.Array | None, norm: nn.Module) -> tuple[jax.Array, jax.Array]:
  """`(x + residual, norm(x + residual))`, in one pass where `norm` is a `FusedLayerNorm` (no residual: `x`)."""
  if residual is None:
    return x, norm(x)
  if isinstance(norm, FusedLayerNorm):
    return norm(x, residual)
  x = x + residual
  return x, norm(x)


def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, as PyTorch's nn.GELU() in timm's ViT, Mixer and ConvNeXt; Flax's default is the tanh form."""
  # PyTorch's formula. Flax's exact form, x·erfc(-x/√2)/2, keeps its relative accuracy below -4 (this one is within
  # 1e-6 there, absolute) but evaluates about 2x slower on XLA:CPU: ConvNeXt-T's train step 1.86 -> 1.83 s.
  return x * (0.5 + 0.5 * lax.erf(x * 2 ** -0.5))


def gelu_tanh(x: jax.Array) -> jax.Array:
  """tanh-approximate GELU, as TF's `gelu` in the official MaxViT and timm's `gelu_tanh` (MaxViT-TF, DiT).

  Off the CPU its backward pass keeps only the input and recomputes the rest (in float32). Autodiff also keeps the
  forward's tanh; with that second user XLA:GPU no longer moves bias + GELU into the epilogue of the preceding cuBLASLt
  product (`BIAS_GELU_AUX`), and the activation takes a pass of its own writing two arrays: 0.93 GB more memory
  traffic per ViT-B/16 block at batch 256 (`benchmarks/gpu_hlo.py`). On the CPU, where the recomputation costs more
  than the traffic it saves, autodiff stays (MaxViT-T's train step 3.23 against 3.36 s)."""
  if jax.default_backend() == 'cpu':
    return nn.gelu(x, approximate=True)
  return _gelu_tanh_recomputed(x)


@jax.custom_vjp
def _gelu_tanh_recomputed(x: jax.Array) -> jax.Array:
  return nn.gelu(x, approximate=True)


def _gelu_tanh_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  return nn.gelu(x, approximate=True), x


def _gelu_tanh_bwd(x: jax.Array, grad: jax.Array) -> tuple[jax.Array]:
  return ((grad.astype(jnp.float32) * kernels.gelu_tanh_slope(x)).astype(grad.dtype),)


_gelu_tanh_recomputed.defvjp(_gelu_tanh_fwd, _gelu_tanh_bwd)


class Mlp(nn.Module):
  """Dense → activation → dropout → Dense → dropout, hidden units on the `mlp` axis (Megatron column / row
  split).

  The parameters are two `nn.Dense`'s, `fc1` and `fc2`. On the CPU the hidden units are computed in pieces of at most
  `cpu_dot.HIDDEN_CHUNK` and fc2's products over the pieces summed (`cpu_dot.hidden_chunks`): the same values up to
  rounding, a faster product. `backward='pallas'` (tanh GELU, no dropout, shapes of whole tiles) runs fc2's backward
  product and the activation's slope as one kernel (`models/gelu_tail.py`); 'auto' does on one GPU."""
  hidden_dim: int
  out_dim: int | None = None
  act: Callable[[jax.Array], jax.Array] = gelu
  dropout: float = 0.0
  in_axis: str = 'embed'
  hidden_axis: str = 'mlp'
  bias_init: Init = nn.initializers.zeros
  dtype: Dtype | None = None
  backward: str = 'xla'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    out_dim = self.out_dim or x.shape[-1]
    k1, b1 = _DenseParams(self.hidden_dim, (self.in_axis, self.hidden_axis), self.bias_init, name='fc1')(x.shape[-1])
    k2, b2 = _DenseParams(out_dim, (self.hidden_axis, self.in_axis), self.bias_init, name='fc2')(self.hidden_dim)
    x, k1, b1, k2, b2 = nn.dtypes.promote_dtype(x, k1, b1, k2, b2, dtype=self.dtype)
    dropout = nn.Dropout(self.dropout, deterministic=not train)
    if (kernel_default(self.backward) == 'pallas' and self.act is gelu_tanh and (self.dropout == 0 or not train)
        and gelu_tail.fits(x, k2)):
      return gelu_tail.gelu_tail(cpu_dot.matmul(x, k1), b1, k2) + b2
    pieces = cpu_dot.hidden_chunks(self.hidden_dim, self.hidden_axis)
    split = lambda a, axis=0: jnp.array_split(a, pieces, axis)  # noqa: E731  (its gradient is a concatenation)
    y = functools.reduce(jnp.add, (cpu_dot.matmul(dropout(self.act(cpu_dot.matmul(x, k1) + b1)), k2)
                                   for k1, b1, k2 in zip(split(k1, 1), split(b1), split(k2))))
    return dropout(y + b2)


class _DenseParams(nn.Module):
  """`dense`'s parameters with its default kernel initialiser (`kernel [in, features]`, `bias [features]`, the same
  names and axes) for a layer that computes its own product."""
  features: int
  axes: tuple[str | None, str | None]
  bias_init: Init = nn.initializers.zeros

  @nn.compact
  def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
    return (self.param('kernel', with_axes(_DENSE_KERNEL_INIT, self.axes), (in_features, self.features)),
            self.param('bias', with_axes(self.bias_init, self.axes[-1:]), (self.features,)))


QK_NORMS = ('layernorm', 'rmsnorm')


def qk_norm(kind: str, dtype: Dtype | None = None, name: str | None = None) -> nn.Module:
  """The per-head query / key normalisation of `Attention(qk_norm=kind)`, over the last (head_dim) axis."""
  if kind == 'layernorm':
    return layer_norm(1e-6, 'kv', dtype=dtype, name=name)
  if kind == 'rmsnorm':
    return nn.RMSNorm(1e-6, dtype=dtype, name=name, scale_init=with_axes(nn.initializers.ones, ('kv',)))
  raise ValueError(f'unknown qk_norm {kind!r}; choose one of {", ".join(QK_NORMS)} (or None)')


class Attention(nn.Module):
  """Multi-head self-attention with separate q/k/v projections `[embed, heads, kv]` and a pluggable kernel.

  Parameters are `{query,key,value}_kernel [embed, heads, head_dim]` with biases `[heads, head_dim]`, and
  `out_kernel [heads, head_dim, embed]`: heads are an explicit axis, so tensor parallelism splits them.

  `impl` picks the attention kernel (`xla`, `pallas`, `cudnn`, `auto`; see `vision_models.kernels.attention`).
  `bias` is an additive logit bias broadcastable to `[batch, heads, q, k]` (relative position bias).
  `qk_norm` ('layernorm' | 'rmsnorm', default None: off) normalises q and k of each head over head_dim with a learned
  `[head_dim]` scale (and bias) shared by the heads, `q_norm` / `k_norm` (ViT-22B, SD3): bounded attention logits.
  `key_length`: the tokens from this index on are padding (`kernels.padded_length`); no token attends to them.
  """
  num_heads: int
  qkv_bias: bool = True
  dropout: float = 0.0
  impl: str = 'xla'
  dtype: Dtype | None = None
  qkv_init: Init | None = None  # Default: xavier_uniform of each [embed, embed] matrix (vision_transformer).
  qk_norm: str | None = None
  key_length: int | None = None

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array | None = None, train: bool = False) -> jax.Array:
    dim = x.shape[-1]
    if dim % self.num_heads:
      raise ValueError(f'width {dim} is not divisible by num_heads {self.num_heads}')
    head_dim = dim // self.num_heads

    def param(name, shape, axes, init):
      return self.param(name, with_axes(init, axes), shape).astype(self.dtype or x.dtype)

    # xavier_uniform of the [embed, embed] matrices the split kernels come from (the vision_transformer init).
    qkv_init = self.qkv_init or nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform', in_axis=0,
                                                                 out_axis=(1, 2))
    qkv_kernels, qkv_biases = [], []
    for name in ('query', 'key', 'value'):  # in this order: each parameter's init key depends on it
      qkv_kernels.append(param(f'{name}_kernel', (dim, self.num_heads, head_dim), ('embed', 'heads', 'kv'), qkv_init))
      if self.qkv_bias:
        qkv_biases.append(param(f'{name}_bias', (self.num_heads, head_dim), ('heads', 'kv'), nn.initializers.zeros))
    # Stacked as [embed, heads, 3, head_dim]: one product's columns ordered (head, q/k/v, head_dim), so that heads split
    # across devices stay whole blocks (`models/qkv.py`: one product backward, and on the CPU forward too).
    q, k, v = qkv.project(x, jnp.stack(qkv_kernels, axis=2), jnp.stack(qkv_biases, axis=1) if self.qkv_bias else None)
    if self.qk_norm:
      q, k = qk_norm(self.qk_norm, self.dtype, 'q_norm')(q), qk_norm(self.qk_norm, self.dtype, 'k_norm')(k)
    out = self.attend(q, k, v, bias)
    out = constrain(out, ('batch', 'length', 'act_heads', None))
    w_out = param('out_kernel', (self.num_heads, head_dim, dim), ('heads', 'kv', 'embed'),
                  nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform', in_axis=(0, 1), out_axis=2))
    out = jnp.einsum('...hk,hkd->...d', out, w_out, _dot_general=cpu_dot.dot_general)
    out = out + param('out_bias', (dim,), ('embed',), nn.initializers.zeros)
    return nn.Dropout(self.dropout, deterministic=not train)(out)

  def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None) -> jax.Array:
    """q, k, v `[batch, length, heads, head_dim]` → the mixed values; subclasses restrict who sees whom."""
    return kernels.attention(q, k, v, bias=bias, impl=self.impl, key_length=self.key_length)


DEPTHWISE_IMPLS = ('auto', 'xla', 'shift', 'pallas')


def depthwise_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int] = (1, 1),
                   padding: str | Sequence[tuple[int, int]] = 'SAME', impl: str = 'auto') -> jax.Array:
  """Depthwise 2-D convolution of NHWC `x` with a `(kh, kw, 1, C)` kernel; `padding` as in `lax.conv`.

  `impl`: `xla` is XLA's grouped convolution; `shift` the sum of kh·kw shifted, strided products with a hand-written
  backward pass (`shift_conv`; XLA:CPU runs grouped convolutions and their gradients about 10× slower); `pallas`
  the Pallas kernel (`kernels.depthwise_conv2d`, stride 1 and 'SAME' only: large kernels); `auto` is `shift` on the
  CPU, else `xla`.
  """
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(f'unknown depthwise impl {impl!r}; choose one of {", ".join(DEPTHWISE_IMPLS)}')
  if impl == 'auto':
    impl = 'shift' if jax.default_backend() == 'cpu' else 'xla'
  if impl == 'pallas':
    if tuple(strides) != (1, 1) or padding != 'SAME':
      raise ValueError("the Pallas depthwise kernel takes stride 1 and 'SAME' padding only")
    return kernels.depthwise_conv2d(x, kernel[:, :, 0, :])
  kh, kw = kernel.shape[:2]
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), strides, padding)
  if impl == 'xla':
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                        feature_group_count=x.shape[-1])
  return shift_conv.shift_depthwise_conv(x, kernel[:, :, 0], tuple(strides), tuple(map(tuple, padding)))


class DepthwiseConv(nn.Module):
  """Depthwise conv with `nn.Conv`'s parameters (`kernel (kh, kw, 1, C)`, `bias`), computed by `depthwise_conv`."""
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: str | Sequence[tuple[int, int]] = 'SAME'
  use_bias: bool = True
  kernel_init: Init = nn.initializers.lecun_normal()
  bias_init: Init = nn.initializers.zeros
  impl: str = 'auto'
  axis_name: str = 'conv_out'
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    kernel = self.param('kernel', with_axes(self.kernel_init, (None, None, None, self.axis_name)),
                        (*self.kernel_size, 1, channels))
    dtype = self.dtype or x.dtype
    y = depthwise_conv(x.astype(dtype), kernel.astype(dtype), tuple(self.strides), self.padding, self.impl)
    if self.use_bias:
      y = y + self.param('bias', with_axes(self.bias_init, (self.axis_name,)), (channels,)).astype(dtype)
    return y


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per example with probability `rate` (rng stream 'dropout')."""
  rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


class LayerScale(nn.Module):
  """Per-channel learned scale (CaiT / DeiT III / ConvNeXt `gamma`)."""
  init_value: float = 1e-6
  axis_name: str = 'embed'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    gamma = self.param('gamma', with_axes(nn.initializers.constant(self.init_value), (self.axis_name,)),
                       (x.shape[-1],))
    return x * gamma.astype(x.dtype)


def sincos_2d(height: int, width: int, dim: int, temperature: float = 10_000.) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding `[height*width, dim]`, big_vision's layout: [sin x, cos x, sin y, cos y]."""
  if dim % 4:
    raise ValueError(f'sin-cos position embedding needs a width divisible by 4, got {dim}')
  y, x = np.mgrid[:height, :width]
  omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4 - 1 if dim > 4 else 1))
  y = np.einsum('m,d->md', y.flatten(), omega)
  x = np.einsum('m,d->md', x.flatten(), omega)
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


def resample_posemb(posemb: jax.Array, new_hw: tuple[int, int]) -> jax.Array:
  """Bilinear resampling of a `[h*w, dim]` grid position embedding to `new_hw` (fine-tuning at another resolution)."""
  n, dim = posemb.shape
  side = int(round(np.sqrt(n)))
  if side * side != n:
    raise ValueError(f'cannot resample a non-square grid of {n} positions')
  grid = posemb.reshape(side, side, dim)
  return jax.image.resize(grid, (*new_hw, dim), method='bilinear', antialias=False).reshape(-1, dim)


def remat(block: type[nn.Module], policy: bool | str, static_argnums: tuple[int, ...]) -> type[nn.Module]:
  """`block` recomputed in the backward pass when `policy` is set: True saves nothing, a name picks a
  `jax.checkpoint_policies` policy (e.g. 'dots_with_no_batch_dims_saveable' keeps the matmul outputs)."""
  if not policy:
    return block
  if policy is True:
    return nn.remat(block, static_argnums=static_argnums)
  if not hasattr(jax.checkpoint_policies, policy):
    raise ValueError(f'unknown remat policy {policy!r}; use True or a name in jax.checkpoint_policies')
  return nn.remat(block, static_argnums=static_argnums, policy=getattr(jax.checkpoint_policies, policy))
