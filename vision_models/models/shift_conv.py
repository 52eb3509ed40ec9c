"""Depthwise 2-D convolution as a sum of shifted products, with its own backward pass (the CPU's fast path).

Differentiating the plain shifted sum makes JAX keep every shifted copy of the input for the kernel gradient (kh·kw
copies of the activation: 49 for a 7×7 conv) and XLA:CPU then writes each to memory and reduces it against the
output gradient in a separate pass. Here the backward pass keeps only the input and computes
- the input gradient as the same shifted sum over the (dilated, padded) output gradient with the flipped kernel;
- the kernel gradient row by row: for kernel row i, one matrix product over batch and output rows gives
  m[c, u, w] = Σ_{b,h} x_pad[b, s·h + i, u, c] · dy[b, h, w, c], and the taps are its diagonals u = s·w + j. It
  wastes the off-diagonal products but runs as a few large matrix products instead of kh·kw memory passes; for
  narrow kernels (fewer than `DOT_MIN_TAPS` columns) the per-tap reductions are cheaper and are used instead.
"""
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

DOT_MIN_TAPS = 5  # narrower kernels waste most of the row-wise products (≥ 12× at 3 wide); a guess, not tuned


def _shifted_sum(xp: jax.Array, kernel: jax.Array, strides: Sequence[int], out_hw: Sequence[int]) -> jax.Array:
  """Σ_ij xp[:, s·h + i, s·w + j] · kernel[i, j] for a padded NHWC `xp` and a `(kh, kw, C)` kernel."""
  (sh, sw), (oh, ow), (batch, channels) = strides, out_hw, (xp.shape[0], xp.shape[-1])
  kh, kw = kernel.shape[:2]
  return sum(lax.slice(xp, (0, i, j, 0), (batch, i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1, channels),
                       (1, sh, sw, 1)) * kernel[i, j] for i in range(kh) for j in range(kw))


def _pad(x: jax.Array, padding) -> jax.Array:
  return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))


def _out_hw(padded_hw: Sequence[int], kernel_hw: Sequence[int], strides: Sequence[int]) -> tuple[int, int]:
  return tuple((p - k) // s + 1 for p, k, s in zip(padded_hw, kernel_hw, strides))


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def shift_depthwise_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                         padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """Depthwise conv of NHWC `x` with a `(kh, kw, C)` kernel; `padding` explicit ((top, bottom), (left, right))."""
  # Written once: otherwise XLA fuses x's producer (MaxViT's BatchNorm and GELU) into each shifted slice and
  # computes it kh·kw times (maxvit_t's step 6.90 → 6.60 s with the barrier; ConvNeXt's blocks unchanged).
  xp = lax.optimization_barrier(_pad(x, padding))
  return _shifted_sum(xp, kernel, strides, _out_hw(xp.shape[1:3], kernel.shape[:2], strides))


def _forward(x, kernel, strides, padding):
  return shift_depthwise_conv(x, kernel, strides, padding), (x, kernel)


def _kernel_grad(xp: jax.Array, dy: jax.Array, kernel_hw: Sequence[int], strides: Sequence[int]) -> jax.Array:
  (kh, kw), (sh, sw), (batch, oh, ow, channels) = kernel_hw, strides, dy.shape
  if kw < DOT_MIN_TAPS:
    return jnp.stack([jnp.stack([jnp.sum(
        lax.slice(xp, (0, i, j, 0), (batch, i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1, channels), (1, sh, sw, 1))
        * dy, axis=(0, 1, 2), dtype=jnp.float32) for j in range(kw)]) for i in range(kh)])
  cols = sw * jnp.arange(ow)[None, :] + jnp.arange(kw)[:, None]  # [kw, ow]: the column u of tap j at output w
  rows = []
  for i in range(kh):
    band = lax.slice(xp, (0, i, 0, 0), (batch, i + sh * (oh - 1) + 1, xp.shape[2], channels), (1, sh, 1, 1))
    m = jnp.einsum('bhuc,bhwc->cuw', band, dy, preferred_element_type=jnp.float32)
    rows.append(m[:, cols, jnp.arange(ow)[None, :]].sum(-1).T)  # [kw, C]
  return jnp.stack(rows)


def _backward(strides, padding, residuals, dy):
  x, kernel = residuals
  xp = _pad(x, padding)
  (kh, kw), (sh, sw), (hp, wp) = kernel.shape[:2], strides, xp.shape[1:3]
  oh, ow = dy.shape[1:3]
  # The input gradient is a full correlation of the stride-dilated dy with the flipped kernel.
  dilated = lax.pad(dy, jnp.zeros((), dy.dtype), ((0, 0, 0), (kh - 1, hp - (oh - 1) * sh - 1, sh - 1),
                                                  (kw - 1, wp - (ow - 1) * sw - 1, sw - 1), (0, 0, 0)))
  dxp = _shifted_sum(dilated, kernel[::-1, ::-1], (1, 1), (hp, wp))
  dx = _pad(dxp, tuple((-a, -b) for a, b in padding))
  return dx, _kernel_grad(xp, dy, (kh, kw), strides).astype(kernel.dtype)


shift_depthwise_conv.defvjp(_forward, _backward)
