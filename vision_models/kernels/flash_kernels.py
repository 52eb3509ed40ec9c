"""The flash attention kernel bodies (one source for Mosaic TPU, Triton GPU and interpret mode) and their config.

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

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from vision_models.kernels.flash_launch import Launch

_MASK = -0.7 * float(np.finfo(np.float32).max)  # finite: a fully masked block gives exp(0), never inf - inf
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b
_LOG2E = float(np.log2(np.e))


@dataclasses.dataclass(frozen=True)
class Config:
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
    return pad_to(self.q_len, max(self.fwd.block_q, self.dkv.block_q, self.dq.block_q))

  @property
  def kp(self) -> int:
    return pad_to(self.k_len, max(self.fwd.block_k, self.dkv.block_k, self.dq.block_k))

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


def pad_to(n: int, block: int) -> int:
  return -(-n // block) * block


def _logits(q, k, bias, cfg: Config, q_start, k_start):
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


def _k_hi(cfg: Config, tile: Launch, q_block, num_k: int):
  """Key blocks [0, hi) that query block `q_block` can see."""
  if not cfg.causal:
    return num_k
  last_col = (q_block + 1) * tile.block_q + cfg.offset  # exclusive
  return jnp.clip(lax.div(jnp.maximum(last_col, 0) + tile.block_k - 1, tile.block_k), 0, num_k)


def _q_lo(cfg: Config, tile: Launch, k_block, num_q: int):
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


def fwd_kernel(*refs, cfg: Config, has_bias: bool):
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


def dkv_kernel(*refs, cfg: Config, has_bias: bool):
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


def dq_kernel(*refs, cfg: Config, has_bias: bool):
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
