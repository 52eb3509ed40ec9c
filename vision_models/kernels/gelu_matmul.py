"""The tanh-GELU MLP's backward product with the activation's slope applied in its epilogue (a Pallas/Triton GEMM).

In `gelu_tanh(x·W1 + b1)·W2` the backward pass computes `g = dy·W2ᵀ` and then `d_pre = g · gelu'(pre)` and the bias
gradient `Σ d_pre`. cuBLASLt could do the second step in the first's epilogue (`DGELU_BGRAD`), but XLA does not emit
it, so XLA:GPU writes g, then reads it back with `pre` in a pass of its own (ViT-B/16 at batch 256 on an H100: 0.93 GB
a block, 11.2 GB a step). `dgelu_matmul` is that product with the epilogue: it reads `pre` tile by tile while the
product's tile is still in registers and writes `d_pre` and per-tile-row partial bias gradients only.

Tiles are `BLOCK_M × BLOCK_N` over a `BLOCK_K` loop; `fits` says whether a shape takes them whole (ViT-B/16 at batch
256: 50688 × 3072 over 768). `dgelu_matmul_reference` is the XLA twin the tests hold it to; `interpret=True` runs it
on the CPU.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

BLOCK_M, BLOCK_N, BLOCK_K = 128, 128, 64
_NT = (((1,), (1,)), ((), ()))  # a [m, k] · b [n, k]ᵀ


def gelu_tanh_slope(x: jax.Array) -> jax.Array:
  """d/dx of the tanh-approximate GELU, in float32."""
  # With u = √(2/π)(x + 0.044715x³): ½(1 + tanh u) = σ(2u) and ½(1 − tanh² u) = 2σ(2u)σ(−2u). Unlike 1 ± tanh u,
  # the sigmoids do not cancel in float32 for |x| > 4.
  z = x.astype(jnp.float32)
  scale = np.float32(np.sqrt(2 / np.pi))
  u2 = 2 * scale * (z + np.float32(0.044715) * z * z * z)
  s = jax.nn.sigmoid(u2)
  return s + 2 * z * s * jax.nn.sigmoid(-u2) * scale * (1 + np.float32(3 * 0.044715) * z * z)


def fits(rows: int, hidden: int, features: int) -> bool:
  """Whether `dgelu_matmul` takes `dy [rows, features]` and `w [hidden, features]` (whole tiles)."""
  return rows % BLOCK_M == 0 and hidden % BLOCK_N == 0 and features % BLOCK_K == 0


def dgelu_matmul_reference(dy: jax.Array, w: jax.Array, pre: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`(d_pre, Σ_rows d_pre)`: d_pre = (dy · wᵀ) · gelu_tanh'(pre) in pre's dtype, the sum in float32."""
  g = lax.dot_general(dy, w, _NT, preferred_element_type=jnp.float32)
  d_pre = g * gelu_tanh_slope(pre)
  return d_pre.astype(pre.dtype), d_pre.sum(0)


def _kernel(dy_ref, w_ref, pre_ref, d_pre_ref, bias_ref, *, steps):
  def step(k, acc):
    a = dy_ref[:, pl.ds(k * BLOCK_K, BLOCK_K)]
    b = w_ref[:, pl.ds(k * BLOCK_K, BLOCK_K)]
    return acc + lax.dot_general(a, b, _NT, preferred_element_type=jnp.float32)

  g = lax.fori_loop(0, steps, step, jnp.zeros((BLOCK_M, BLOCK_N), jnp.float32))
  d_pre = g * gelu_tanh_slope(pre_ref[...])
  d_pre_ref[...] = d_pre.astype(d_pre_ref.dtype)
  bias_ref[...] = d_pre.sum(0)


@functools.partial(jax.jit, static_argnames='interpret')
def dgelu_matmul(dy: jax.Array, w: jax.Array, pre: jax.Array, interpret: bool = False) -> tuple[jax.Array, jax.Array]:
  """`dgelu_matmul_reference(dy [rows, features], w [hidden, features], pre [rows, hidden])` in one kernel."""
  (rows, features), hidden = dy.shape, w.shape[0]
  if not fits(rows, hidden, features):
    raise ValueError(f'dgelu_matmul takes whole {BLOCK_M}x{BLOCK_N}x{BLOCK_K} tiles, not {rows}x{hidden}x{features}')
  grid = (rows // BLOCK_M, hidden // BLOCK_N)
  params = None if interpret else pltriton.CompilerParams(num_warps=8, num_stages=3)
  d_pre, bias = pl.pallas_call(
      functools.partial(_kernel, steps=features // BLOCK_K), grid=grid, interpret=interpret, name='dgelu_matmul',
      in_specs=[pl.BlockSpec((BLOCK_M, features), lambda i, j: (i, 0)),
                pl.BlockSpec((BLOCK_N, features), lambda i, j: (j, 0)),
                pl.BlockSpec((BLOCK_M, BLOCK_N), lambda i, j: (i, j))],
      out_specs=[pl.BlockSpec((BLOCK_M, BLOCK_N), lambda i, j: (i, j)),
                 pl.BlockSpec((None, BLOCK_N), lambda i, j: (i, j))],
      out_shape=[jax.ShapeDtypeStruct(pre.shape, pre.dtype), jax.ShapeDtypeStruct((grid[0], hidden), jnp.float32)],
      compiler_params=params)(dy, w, pre)
  return d_pre, bias.sum(0)
