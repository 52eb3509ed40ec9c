"""Blockwise (flash) attention in Pallas: online softmax over key blocks, forward and backward kernels.

One `pl.pallas_call` source per kernel, with BlockSpecs only, so it lowers to Mosaic TPU and to Triton GPU (and runs
in interpret mode on the CPU). The kernels work in the `[batch, heads, seq, head_dim]` layout (TPU tiles the last two
dims), with sequences zero-padded to a whole number of blocks. On GPUs, sequences of up to `SHORT_SEQ` tokens (ViT's
197) are read and written in the callers' `[batch, seq, heads, head_dim]` arrays instead (seq-major): no transposes
around the kernels, and from jax 0.12 on no padding copies either, since Triton then masks the loads and stores of a
block that runs past the sequence and the kernels zero the rows such a load leaves undefined (jax 0.11's lowering
does not mask, so there the sequences are zero-padded). At 4K tokens on an H100 seq-major was 3% slower (strided
rows), so long sequences keep the head-major layout. Padded keys are masked inside the kernels.

  forward   grid (batch, heads, q blocks); K/V of one (batch, head) stay resident while a `fori_loop` walks the key
            blocks keeping the running max `m`, sum `l` and output accumulator in float32. Saves o and lse = m + log2 l.
            Logits are kept in base 2 (scaled by log2 e), so each probability costs one exp2 and no extra multiply.
  backward  recomputes the probabilities p = exp2(s - lse) block by block (never the full matrix):
            dK/dV kernel, grid (batch, heads, k blocks), loops over query blocks;
            dQ kernel, grid (batch, heads, q blocks), loops over key blocks and also writes dS (= dbias) when a bias
            is given. delta = rowsum(o * do) is computed outside, in XLA.
Causal attention skips key blocks past the diagonal (aligned bottom-right, like `reference_attention`).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from vision_models.errors import ConfigError

_MASK = -0.7 * float(np.finfo(np.float32).max)  # finite: a fully masked block gives exp(0), never inf - inf
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b
_MAX_BLOCK = 128
_LOG2E = float(np.log2(np.e))
# Whether Pallas' Triton lowering masks a block's loads and stores past the array's end (jax >= 0.12). Without it, a
# seq-major store past one example's last token overwrites the next example's first rows.
SEQ_MAJOR_IN_PLACE = jax.__version_info__ >= (0, 12)


@dataclasses.dataclass(frozen=True)
class Launch:
  """One kernel's tiles, and on GPUs its Triton launch: warps per program and software-pipelining stages."""
  block_q: int = _MAX_BLOCK
  block_k: int = _MAX_BLOCK
  num_warps: int = 4
  num_stages: int = 2


KERNELS = ('fwd', 'dkv', 'dq')
# Chosen on an H100 with `python -m benchmarks.attention_tune` (bfloat16, head_dim 64, 4K tokens; RESULTS.md).
GPU_LAUNCH = {'fwd': Launch(64, 128, 4, 2), 'dkv': Launch(64, 64, 4, 3), 'dq': Launch(128, 32, 4, 3)}
# For sequences of at most SHORT_SEQ tokens (seq-major); chosen likewise at ViT-B/16's shape (197 tokens, batch 256,
# 12 heads).
SHORT_SEQ = 256
GPU_LAUNCH_SHORT = {'fwd': Launch(128, 64, 8, 3), 'dkv': Launch(128, 128, 8, 3), 'dq': Launch(128, 64, 4, 3)}


@dataclasses.dataclass(frozen=True)
class _Config:
  sm_scale: float
  causal: bool
  q_len: int
  k_len: int
  interpret: bool
  seq_major: bool  # q, k, v, o and their gradients as [B, S, H, D] (GPU)
  in_place: bool  # seq-major without padding the sequences: blocks past the end masked by the lowering
  fwd: Launch
  dkv: Launch
  dq: Launch

  @property
  def offset(self) -> int:
    """Causal diagonal: query row r sees keys c <= r + offset."""
    return self.k_len - self.q_len

  @property
  def qp(self) -> int:
    """Padded query length: a multiple of every kernel's query block (all powers of two)."""
    return _pad_to(self.q_len, max(self.fwd.block_q, self.dkv.block_q, self.dq.block_q))

  @property
  def kp(self) -> int:
    return _pad_to(self.k_len, max(self.fwd.block_k, self.dkv.block_k, self.dq.block_k))

  @property
  def masked(self) -> bool:
    return self.causal or self.kp != self.k_len

  @property
  def ragged_q(self) -> bool:
    """Whether query rows past q_len reach the kernels undefined (seq-major) rather than zero-padded."""
    return self.in_place and self.qp != self.q_len

  @property
  def ragged_k(self) -> bool:
    return self.in_place and self.kp != self.k_len


def _next_pow2(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


def _block(requested: int | None, length: int, name: str) -> int:
  """A power of two (Triton) that is a multiple of 8 (TPU sublanes); one whole block for short sequences."""
  if requested is not None and (requested < 8 or requested & (requested - 1)):
    raise ConfigError(f'{name}={requested} must be a power of two >= 8 (Triton needs powers of two, TPU multiples '
                      'of 8); use e.g. 64 or 128')
  return min(requested or _MAX_BLOCK, max(16, _next_pow2(length)))


def _pad_to(n: int, block: int) -> int:
  return -(-n // block) * block


# --------------------------------------------------------------------------------------------------- kernel bodies


def _logits(q, k, bias, cfg: _Config, q_start, k_start):
  """Scaled, biased, masked float32 logits of one [block_q, block_k] tile, in base 2: (q kᵀ · scale + bias) log2 e."""
  s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * (cfg.sm_scale * _LOG2E)
  if bias is not None:
    s = s + bias.astype(jnp.float32) * _LOG2E
  if cfg.masked:
    rows = q_start + lax.broadcasted_iota(jnp.int32, s.shape, 0)
    cols = k_start + lax.broadcasted_iota(jnp.int32, s.shape, 1)
    valid = cols < cfg.k_len
    if cfg.causal:
      valid = valid & (cols <= rows + cfg.offset)
    s = jnp.where(valid, s, _MASK)
  return s


def _zero_past(x, start, length: int, ragged: bool):
  """Rows start + r >= length of a loaded tile set to zero: a seq-major load past the sequence leaves them undefined,
  and zeros are what the padded layout would hold (finite logits, nothing added to the sums over rows)."""
  if not ragged:
    return x
  rows = start + lax.broadcasted_iota(jnp.int32, x.shape, 0)
  return jnp.where(rows < length, x, jnp.zeros_like(x))


def _k_hi(cfg: _Config, tile: Launch, q_block, num_k: int):
  """Key blocks [0, hi) that query block `q_block` can see."""
  if not cfg.causal:
    return num_k
  last_col = (q_block + 1) * tile.block_q + cfg.offset  # exclusive
  return jnp.clip(lax.div(jnp.maximum(last_col, 0) + tile.block_k - 1, tile.block_k), 0, num_k)


def _q_lo(cfg: _Config, tile: Launch, k_block, num_q: int):
  """First query block that sees key block `k_block`."""
  if not cfg.causal:
    return 0
  return jnp.minimum(lax.div(jnp.maximum(k_block * tile.block_k - cfg.offset, 0), tile.block_q), num_q)


def _split(refs, has_bias: bool, n_in: int):
  """(inputs with bias or None at index 3, outputs)."""
  ins = list(refs[:n_in])
  if not has_bias:
    ins.insert(3, None)
  return ins, refs[n_in:]


def _fwd_kernel(*refs, cfg: _Config, has_bias: bool):
  (q_ref, k_ref, v_ref, bias_ref), (o_ref, lse_ref) = _split(refs, has_bias, 3 + has_bias)
  bq, bk = cfg.fwd.block_q, cfg.fwd.block_k
  i = pl.program_id(2)
  q = _zero_past(q_ref[...], i * bq, cfg.q_len, cfg.ragged_q)  # finite lse for the rows past q_len

  def body(j, carry):
    acc, m, l = carry
    start = pl.multiple_of(j * bk, bk)
    s = _logits(q, k_ref[pl.ds(start, bk), :], None if bias_ref is None else bias_ref[j], cfg, i * bq, start)
    m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
    alpha = jnp.exp2(m - m_new)
    p = jnp.exp2(s - m_new)
    v = _zero_past(v_ref[pl.ds(start, bk), :], start, cfg.k_len, cfg.ragged_k)  # 0 · undefined may be NaN
    acc = alpha * acc + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return acc, m_new, alpha * l + jnp.sum(p, axis=1, keepdims=True)

  init = (jnp.zeros(q.shape, jnp.float32), jnp.full((bq, 1), _MASK, jnp.float32), jnp.zeros((bq, 1), jnp.float32))
  acc, m, l = lax.fori_loop(0, _k_hi(cfg, cfg.fwd, i, k_ref.shape[0] // bk), body, init)
  l = jnp.where(l == 0, 1.0, l)  # rows that see no key at all (causal with q_len > k_len)
  o_ref[...] = (acc / l).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log2(l)


def _probs_and_dlogits(q, k, v, bias, do, lse, delta, cfg, q_start, k_start):
  """Recomputed probabilities p and the logit gradient dS = p * (dP - delta) of one tile."""
  p = jnp.exp2(_logits(q, k, bias, cfg, q_start, k_start) - lse)
  dp = lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
  return p, p * (dp - delta)


def _dkv_kernel(*refs, cfg: _Config, has_bias: bool):
  (q_ref, k_ref, v_ref, bias_ref, do_ref, lse_ref, delta_ref), (dk_ref, dv_ref) = _split(refs, has_bias, 6 + has_bias)
  bq, bk = cfg.dkv.block_q, cfg.dkv.block_k
  j = pl.program_id(2)
  k, v = k_ref[...], v_ref[...]

  def body(i, carry):
    dk, dv = carry
    rows = pl.ds(pl.multiple_of(i * bq, bq), bq)
    q, do = (_zero_past(ref[rows, :], i * bq, cfg.q_len, cfg.ragged_q) for ref in (q_ref, do_ref))
    bias = None if bias_ref is None else bias_ref[rows, :]
    p, ds = _probs_and_dlogits(q, k, v, bias, do, lse_ref[rows, :], delta_ref[rows, :], cfg, i * bq, j * bk)
    dv = dv + lax.dot_general(p.astype(do.dtype), do, _TN, preferred_element_type=jnp.float32)
    dk = dk + lax.dot_general(ds.astype(q.dtype), q, _TN, preferred_element_type=jnp.float32)
    return dk, dv

  num_q = q_ref.shape[0] // bq
  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(_q_lo(cfg, cfg.dkv, j, num_q), num_q, body, (zeros, zeros))
  dk_ref[...] = (dk * cfg.sm_scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(*refs, cfg: _Config, has_bias: bool):
  (q_ref, k_ref, v_ref, bias_ref, do_ref, lse_ref, delta_ref), outs = _split(refs, has_bias, 6 + has_bias)
  dq_ref, dbias_ref = outs if has_bias else (outs[0], None)
  bq, bk = cfg.dq.block_q, cfg.dq.block_k
  i = pl.program_id(2)
  q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]

  def body(j, dq):
    start = pl.multiple_of(j * bk, bk)
    k, v = (_zero_past(ref[pl.ds(start, bk), :], start, cfg.k_len, cfg.ragged_k) for ref in (k_ref, v_ref))
    bias = None if bias_ref is None else bias_ref[j]
    _, ds = _probs_and_dlogits(q, k, v, bias, do, lse, delta, cfg, i * bq, start)
    if dbias_ref is not None:
      dbias_ref[j] = ds.astype(dbias_ref.dtype)
    return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

  num_k = k_ref.shape[0] // bk
  hi = _k_hi(cfg, cfg.dq, i, num_k)
  dq = lax.fori_loop(0, hi, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * cfg.sm_scale).astype(dq_ref.dtype)
  if dbias_ref is not None and cfg.causal:  # key blocks past the diagonal get no gradient

    def zero(j, carry):
      dbias_ref[j] = jnp.zeros((bq, bk), dbias_ref.dtype)
      return carry

    lax.fori_loop(hi, num_k, zero, 0)


# ---------------------------------------------------------------------------------------------------- pallas calls


def _pallas(kernel, cfg: _Config, tile: Launch, *, grid, in_specs, out_specs, out_shape, name):
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

  def __init__(self, q, k, bias, cfg: _Config):
    self.batch, _, self.heads, self.head_dim = q.shape
    self.dp = max(16, _next_pow2(self.head_dim))  # Triton needs power-of-two tiles; zero columns change nothing
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


def _forward(q, k, v, bias, cfg: _Config):
  lay = _Layout(q, k, bias, cfg)
  bq, bk = cfg.fwd.block_q, cfg.fwd.block_k
  args = [lay.seq(q, lay.qp), lay.seq(k, lay.kp), lay.seq(v, lay.kp)]
  in_specs = [lay.rows(bq), lay.rows(lay.kp, False), lay.rows(lay.kp, False)]
  if bias is not None:
    args.append(lay.bias(bias))
    in_specs.append(pl.BlockSpec((None, None, lay.kp // bk, bq, bk), lay.bias_map(lambda b, h, i: (b, h, 0, i, 0))))
  out_shape = [_out(lay.shape(cfg.q_len, lay.qp), q.dtype, q),
               _out((lay.batch, lay.heads, lay.qp, 1), jnp.float32, q)]
  kernel = functools.partial(_fwd_kernel, cfg=cfg, has_bias=bias is not None)
  o, lse = _pallas(kernel, cfg, cfg.fwd, grid=(lay.batch, lay.heads, lay.qp // bq), in_specs=in_specs,
                   out_specs=[lay.rows(bq), lay.stats(bq)], out_shape=out_shape,
                   name='flash_attention_fwd')(*args)
  return lay.unseq(o, cfg.q_len), lse


def _backward(cfg: _Config, residuals, do):
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
  dk, dv = _pallas(functools.partial(_dkv_kernel, cfg=cfg, has_bias=has_bias), cfg, cfg.dkv,
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
  outs = _pallas(functools.partial(_dq_kernel, cfg=cfg, has_bias=has_bias), cfg, cfg.dq,
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


def _gpu_default(tile: Launch, row_bytes: int) -> Launch:
  """GPU_LAUNCH was tuned for rows of 128 bytes (bf16, head_dim 64); wider rows (float32, head_dim 128) get smaller
  tiles and at most 2 stages, so the pipelined tiles still fit in shared memory (227 KiB on an H100)."""
  growth = row_bytes // 128
  if growth <= 1:
    return tile
  cap = 64 if growth == 2 else 32
  return dataclasses.replace(tile, block_q=min(tile.block_q, cap), block_k=min(tile.block_k, 64),
                             num_stages=min(tile.num_stages, 2))


def _launches(launch: dict[str, Launch] | None, block_q: int | None, block_k: int | None, q_len: int, k_len: int,
              shared_tiles: bool, row_bytes: int) -> dict[str, Launch]:
  """Each kernel's Launch: `launch`, else the backend's default; block_q / block_k override every kernel's tiles."""
  unknown = set(launch or {}) - set(KERNELS)
  if unknown:
    raise ConfigError(f'launch has unknown kernels {sorted(unknown)}; the kernels are {", ".join(KERNELS)}')
  defaults = {}
  if jax.default_backend() == 'gpu':
    table = GPU_LAUNCH_SHORT if max(q_len, k_len) <= SHORT_SEQ else GPU_LAUNCH
    defaults = {name: _gpu_default(tile, row_bytes) for name, tile in table.items()}
  out = {}
  for name in KERNELS:
    tile = (launch or {}).get(name) or defaults.get(name) or Launch()
    if shared_tiles and name != 'fwd':  # a bias is laid out in the forward's key blocks
      tile = dataclasses.replace(tile, block_q=out['fwd'].block_q, block_k=out['fwd'].block_k)
    out[name] = dataclasses.replace(tile, block_q=_block(block_q or tile.block_q, q_len, 'block_q'),
                                    block_k=_block(block_k or tile.block_k, k_len, 'block_k'))
  return out


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
  tiles = _launches(launch, block_q, block_k, q_len, k_len, shared_tiles=bias is not None,
                    row_bytes=max(16, _next_pow2(head_dim)) * jnp.dtype(q.dtype).itemsize)
  if seq_major is None:
    seq_major = jax.default_backend() == 'gpu' and max(q_len, k_len) <= SHORT_SEQ
  cfg = _Config(sm_scale=float(head_dim ** -0.5 if sm_scale is None else sm_scale), causal=bool(causal),
                q_len=q_len, k_len=k_len,
                interpret=jax.default_backend() == 'cpu' if interpret is None else bool(interpret),
                seq_major=seq_major, in_place=seq_major and SEQ_MAJOR_IN_PLACE, **tiles)
  return _flash(q, k, v, bias, cfg)
