"""Blockwise (flash) attention in Pallas: online softmax over key blocks, forward and backward kernels.

One `pl.pallas_call` source per kernel, with BlockSpecs only, so it lowers to Mosaic TPU and to Triton GPU (and runs
in interpret mode on the CPU). The kernels work in the `[batch, heads, seq, head_dim]` layout (TPU tiles the last two
dims), with sequences zero-padded to a whole number of blocks. On GPUs, sequences of up to `SHORT_SEQ` tokens (ViT's
197) are read and written in the callers' `[batch, seq, heads, head_dim]` arrays instead (seq-major): no transposes
around the kernels, and from jax 0.12 on no padding copies either, since Triton then masks the loads and stores of a
block that runs past the sequence and the kernels zero the rows such a load leaves undefined (jax 0.11's lowering
does not mask, so there the sequences are zero-padded). At 4K tokens on an H100 seq-major was 3% slower (strided
rows), so long sequences keep the head-major layout. Padded keys are masked inside the kernels.

The kernel bodies are in `flash_kernels.py`, their launches in `flash_launch.py`.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from vision_models.errors import ConfigError
from vision_models.kernels.flash_kernels import Config, dkv_kernel, dq_kernel, fwd_kernel
from vision_models.kernels.flash_launch import Launch, is_short, launches, next_pow2

# Whether Pallas' Triton lowering masks a block's loads and stores past the array's end (jax >= 0.12). Without it, a
# seq-major store past one example's last token overwrites the next example's first rows.
SEQ_MAJOR_IN_PLACE = jax.__version_info__ >= (0, 12)


def _pallas(kernel, cfg: Config, tile: Launch, *, grid, in_specs, out_specs, out_shape, name):
  """The pallas_call, with each backend's compiler params chosen at lowering time (one source for TPU and GPU)."""

  def call(params):
    return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
                          compiler_params=params, interpret=cfg.interpret, name=name)

  if cfg.interpret:
    return call(None)
  tpu = call(pltpu.CompilerParams(dimension_semantics=('parallel',) * len(grid)))
  gpu = call(pltriton.CompilerParams(num_warps=tile.num_warps, num_stages=tile.num_stages))
  return lambda *args: lax.platform_dependent(*args, tpu=tpu, cuda=gpu, rocm=gpu)


class _Layout:
  """Kernel layout of one call: q, k, v, o as [batch, heads, padded seq, padded head_dim], or seq-major as
  [batch, seq, heads, padded head_dim]; lse and delta as [batch, heads, padded seq, 1]; bias as
  [Bb, Hb, k blocks, Qp, block_k].

  With a bias every kernel uses the forward's tiles (flash_attention enforces it), so one bias layout serves all.
  """

  def __init__(self, q, k, bias, cfg: Config):
    self.batch, _, self.heads, self.head_dim = q.shape
    self.dp = max(16, next_pow2(self.head_dim))  # Triton needs power-of-two tiles; zero columns change nothing
    self.qp, self.kp = cfg.qp, cfg.kp
    self.bias_bh = None if bias is None else bias.shape[:2]
    self.cfg = cfg

  def seq(self, x, padded: int):
    """[B, S, H, D] -> [B, H, padded, dp], or seq-major [B, S or padded, H, dp]."""
    seq_axis = 1 if self.cfg.seq_major else 2
    if not self.cfg.seq_major:
      x = jnp.swapaxes(x, 1, 2)
    pad = [(0, 0)] * 4
    if not self.cfg.in_place:
      pad[seq_axis] = (0, padded - x.shape[seq_axis])
    pad[3] = (0, self.dp - self.head_dim)
    return jnp.pad(x, pad) if any(high for _, high in pad) else x

  def unseq(self, x, length: int):
    if self.cfg.seq_major:
      return x[:, :length, :, :self.head_dim]
    return jnp.swapaxes(x[:, :, :length, :self.head_dim], 1, 2)

  def shape(self, length: int, padded: int) -> tuple[int, int, int, int]:
    """Shape of a q-, k- or v-like array in the kernels' layout."""
    if self.cfg.seq_major:
      return (self.batch, length if self.cfg.in_place else padded, self.heads, self.dp)
    return (self.batch, self.heads, padded, self.dp)

  def bias(self, bias):
    """[Bb, Hb, Q, K] -> [Bb, Hb, nk, Qp, block_k]: a key block is a leading index, no dynamic lane slicing."""
    cfg = self.cfg
    bias = jnp.pad(bias, ((0, 0), (0, 0), (0, self.qp - cfg.q_len), (0, self.kp - cfg.k_len)))
    return bias.reshape(*bias.shape[:3], self.kp // cfg.fwd.block_k, cfg.fwd.block_k).transpose(0, 1, 3, 2, 4)

  def bias_map(self, fn):
    """Index map for the bias: broadcast batch / head dims always read block 0."""
    bb, hb = self.bias_bh
    return lambda b, h, x: fn(b if bb > 1 else 0, h if hb > 1 else 0, x)

  def rows(self, block: int, blocked: bool = True):
    """Spec for a q-, k- or v-like array: one `block` of rows per grid step, or all rows (blocked=False)."""
    if self.cfg.seq_major:
      return pl.BlockSpec((None, block, None, self.dp), lambda b, h, x: (b, x if blocked else 0, h, 0))
    return self.stats(block, blocked, self.dp)

  @staticmethod
  def stats(block: int, blocked: bool = True, width: int = 1):
    """Spec for a [B, H, S, width] array (lse, delta): one `block` of rows per grid step, or all of them."""
    return pl.BlockSpec((None, None, block, width), lambda b, h, x: (b, h, x if blocked else 0, 0))


def _out(shape, dtype, like: jax.Array) -> jax.ShapeDtypeStruct:
  """An output varying over the same shard_map axes as `like` (q, which varies wherever any input does)."""
  aval = jax.typeof(like)
  if hasattr(aval, 'manual_axis_type'):  # jax >= 0.12; 0.11 calls it vma
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=aval.manual_axis_type)
  return jax.ShapeDtypeStruct(shape, dtype, vma=aval.vma)


def _varying(x: jax.Array) -> frozenset:
  """The shard_map axes x varies over (empty outside shard_map)."""
  aval = jax.typeof(x)
  mat = getattr(aval, 'manual_axis_type', None)
  return mat.varying if mat is not None else getattr(aval, 'vma', frozenset())


def _forward(q, k, v, bias, cfg: Config):
  lay = _Layout(q, k, bias, cfg)
  bq, bk = cfg.fwd.block_q, cfg.fwd.block_k
  args = [lay.seq(q, lay.qp), lay.seq(k, lay.kp), lay.seq(v, lay.kp)]
  in_specs = [lay.rows(bq), lay.rows(lay.kp, False), lay.rows(lay.kp, False)]
  if bias is not None:
    args.append(lay.bias(bias))
    in_specs.append(pl.BlockSpec((None, None, lay.kp // bk, bq, bk), lay.bias_map(lambda b, h, i: (b, h, 0, i, 0))))
  out_shape = [_out(lay.shape(cfg.q_len, lay.qp), q.dtype, q),
               _out((lay.batch, lay.heads, lay.qp, 1), jnp.float32, q)]
  kernel = functools.partial(fwd_kernel, cfg=cfg, has_bias=bias is not None)
  o, lse = _pallas(kernel, cfg, cfg.fwd, grid=(lay.batch, lay.heads, lay.qp // bq), in_specs=in_specs,
                   out_specs=[lay.rows(bq), lay.stats(bq)], out_shape=out_shape,
                   name='flash_attention_fwd')(*args)
  return lay.unseq(o, cfg.q_len), lse


def _backward(cfg: Config, residuals, do):
  q, k, v, bias, o, lse = residuals
  lay = _Layout(q, k, bias, cfg)
  has_bias = bias is not None
  delta = jnp.einsum('bqhd,bqhd->bhq', o.astype(jnp.float32), do.astype(jnp.float32))
  delta = jnp.pad(delta, ((0, 0), (0, 0), (0, lay.qp - cfg.q_len)))[..., None]
  qt, kt, vt, dot = lay.seq(q, lay.qp), lay.seq(k, lay.kp), lay.seq(v, lay.kp), lay.seq(do, lay.qp)
  args = [qt, kt, vt] + ([lay.bias(bias)] if has_bias else []) + [dot, lse, delta]

  # dK, dV: one key block per grid step, all query rows resident.
  bq, bk = cfg.dkv.block_q, cfg.dkv.block_k
  q_all, k_blk = lay.rows(lay.qp, False), lay.rows(bk)
  specs = [q_all, k_blk, k_blk] + (
      [pl.BlockSpec((None, None, None, lay.qp, bk), lay.bias_map(lambda b, h, j: (b, h, j, 0, 0)))] if has_bias
      else []) + [q_all, lay.stats(lay.qp, False), lay.stats(lay.qp, False)]
  dk, dv = _pallas(functools.partial(dkv_kernel, cfg=cfg, has_bias=has_bias), cfg, cfg.dkv,
                   grid=(lay.batch, lay.heads, lay.kp // bk),
                   in_specs=specs, out_specs=[k_blk, k_blk], name='flash_attention_dkv',
                   out_shape=[_out(kt.shape, k.dtype, q), _out(vt.shape, v.dtype, q)])(*args)

  # dQ (and dS = dbias): one query block per grid step, all keys resident.
  bq, bk = cfg.dq.block_q, cfg.dq.block_k
  q_blk, k_all = lay.rows(bq), lay.rows(lay.kp, False)
  bias_blk = pl.BlockSpec((None, None, lay.kp // bk, bq, bk), lambda b, h, i: (b, h, 0, i, 0))
  specs = [q_blk, k_all, k_all] + (
      [pl.BlockSpec(bias_blk.block_shape, lay.bias_map(lambda b, h, i: (b, h, 0, i, 0)))] if has_bias else []) + [
          q_blk, lay.stats(bq), lay.stats(bq)]
  out_shape = [_out(qt.shape, q.dtype, q)]
  if has_bias:
    out_shape.append(_out((lay.batch, lay.heads, lay.kp // bk, lay.qp, bk), jnp.float32, q))
  outs = _pallas(functools.partial(dq_kernel, cfg=cfg, has_bias=has_bias), cfg, cfg.dq,
                 grid=(lay.batch, lay.heads, lay.qp // bq),
                 in_specs=specs, out_specs=[q_blk, bias_blk][:len(out_shape)], out_shape=out_shape,
                 name='flash_attention_dq')(*args)
  dbias = None
  if has_bias:  # sum over the dims the bias was broadcast along, then back to [Bb, Hb, Q, K]
    ds = outs[1].sum(axis=tuple(a for a, n in enumerate(bias.shape[:2]) if n == 1), keepdims=True)
    ds = ds.transpose(0, 1, 3, 2, 4).reshape(*ds.shape[:2], lay.qp, lay.kp)
    dbias = ds[:, :, :cfg.q_len, :cfg.k_len]
    replicated = _varying(dbias) - _varying(bias)  # in shard_map: a bias shared across shards sums their gradients
    if replicated:
      dbias = lax.psum(dbias, tuple(sorted(replicated)))
    dbias = dbias.astype(bias.dtype)
  return lay.unseq(outs[0], cfg.q_len), lay.unseq(dk, cfg.k_len), lay.unseq(dv, cfg.k_len), dbias


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, bias, cfg):
  return _forward(q, k, v, bias, cfg)[0]


def _flash_fwd(q, k, v, bias, cfg):
  o, lse = _forward(q, k, v, bias, cfg)
  return o, (q, k, v, bias, o, lse)  # only o and the log-sum-exp beyond the inputs: the backward recomputes p


_flash.defvjp(_flash_fwd, _backward)


def _full_bias(bias: jax.Array, shape: tuple[int, int, int, int]) -> jax.Array:
  """Bias as [1 or B, 1 or H, Q, K]; broadcasting over q/k happens here, so autodiff sums its gradient."""
  if bias.ndim > 4 or any(n not in (1, m) for n, m in zip(bias.shape[::-1], shape[::-1])):
    raise ConfigError(f'bias of shape {bias.shape} is not broadcastable to [batch, heads, q, k] = {shape}')
  bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
  return jnp.broadcast_to(bias, bias.shape[:2] + shape[2:])


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, bias: jax.Array | None = None, causal: bool = False,
                    sm_scale: float | None = None, block_q: int | None = None, block_k: int | None = None,
                    launch: dict[str, Launch] | None = None, interpret: bool | None = None,
                    seq_major: bool | None = None) -> jax.Array:
  """softmax(q kᵀ · sm_scale + bias) v without materialising the [q, k] matrix, differentiable in q, k, v, bias.

  q `[batch, q_len, heads, head_dim]`, k and v `[batch, k_len, heads, head_dim]` (jax.nn.dot_product_attention's
  layout); bias broadcastable to `[batch, heads, q_len, k_len]`. Any lengths (padded to the blocks and masked).
  `sm_scale` defaults to 1/sqrt(head_dim). `launch` maps 'fwd', 'dkv', 'dq' to each kernel's `Launch` (tiles, Triton
  warps and stages); the default is `GPU_LAUNCH` (`GPU_LAUNCH_SHORT` up to `SHORT_SEQ` tokens) on GPUs and 128 x 128
  tiles elsewhere, tiles shrunk to one block for short sequences; `block_q` / `block_k` set every kernel's tiles
  (powers of two). `interpret=None` interprets the kernels when the default backend is the CPU. `seq_major` has the
  kernels work on the [B, S, H, D] arrays without transposing them (the default on GPUs up to `SHORT_SEQ` tokens;
  TPUs need the head-major layout).
  Softmax statistics and accumulators are float32 whatever the input dtype; the output has q's dtype.
  """
  if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or q.shape[::2] != k.shape[::2] or q.shape[3] != k.shape[3]:
    raise ConfigError(f'expected q [B, Q, H, D] and k, v [B, K, H, D] with matching B, H, D; got {q.shape}, '
                      f'{k.shape}, {v.shape}')
  batch, q_len, heads, head_dim = q.shape
  k_len = k.shape[1]
  if bias is not None:
    bias = _full_bias(bias, (batch, heads, q_len, k_len))
  tiles = launches(launch, block_q, block_k, q_len, k_len, shared_tiles=bias is not None,
                   row_bytes=max(16, next_pow2(head_dim)) * jnp.dtype(q.dtype).itemsize)
  if seq_major is None:
    seq_major = jax.default_backend() == 'gpu' and is_short(q_len, k_len)
  cfg = Config(sm_scale=float(head_dim ** -0.5 if sm_scale is None else sm_scale), causal=bool(causal),
               q_len=q_len, k_len=k_len,
               interpret=jax.default_backend() == 'cpu' if interpret is None else bool(interpret),
               seq_major=seq_major, in_place=seq_major and SEQ_MAJOR_IN_PLACE, **tiles)
  return _flash(q, k, v, bias, cfg)
