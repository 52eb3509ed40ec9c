"""Depthwise 2-D convolution as a sum of shifted products, with its own backward pass (the CPU's fast path).

Differentiating the plain shifted sum makes JAX keep every shifted copy of the input for the kernel gradient (kh·kw
copies of the activation: 49 for a 7×7 conv) and XLA:CPU then writes each to memory and reduces it against the
output gradient in a separate pass. Here the backward pass keeps only the input and computes
- the input gradient as the same shifted sum over the (dilated, padded) output gradient with the flipped kernel;
- the kernel gradient, for stride 1, as a correlation through the FFT: per image and channel,
  dK[i, j] = Σ_{h,w} x_pad[h + i, w + j] · dy[h, w] is the cross-correlation of x_pad with dy at lags (i, j), so the
  product of their spectra, summed over the batch, gives every tap in one inverse transform. It costs O(log n) per
  element whatever the kernel's size, against kh·kw memory passes for per-tap reductions: ConvNeXt-T's 7×7 kernel
  gradients at batch 8 took 46 ms (56×56×96) and 14 ms (28×28×192) against 111 and 80 ms as row-wise matrix
  products (convnext_t's step 3.56 → 3.24 s). Narrow kernels (MaxViT's 3×3) and strided convs keep per-tap
  reductions.
"""
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.fft
from jax import lax

# Kernels with fewer taps keep the per-tap reductions: MaxViT-T's 3×3 kernel gradients through the FFT took 16 against
# 39 ms alone (14×14×1024) but its whole step went 4.75 → 5.02 s with them.
FFT_MIN_TAPS = 25


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
  # The sum written once too: otherwise XLA fuses the kh·kw taps into each consumer (ConvNeXt's LayerNorm statistics,
  # its normalisation and their gradients) and computes them 3-4 times per block (convnext_t's step 1.99 → 1.87 s).
  return lax.optimization_barrier(_shifted_sum(xp, kernel, strides, _out_hw(xp.shape[1:3], kernel.shape[:2], strides)))


def _forward(x, kernel, strides, padding):
  return shift_depthwise_conv(x, kernel, strides, padding), (x, kernel)


def _kernel_grad(xp: jax.Array, dy: jax.Array, kernel_hw: Sequence[int], strides: Sequence[int],
                 padding: Sequence[Sequence[int]]) -> jax.Array:
  if tuple(strides) == (1, 1) and kernel_hw[0] * kernel_hw[1] >= FFT_MIN_TAPS:
    return _fft_kernel_grad(xp, dy, kernel_hw, padding)
  return _per_tap_kernel_grad(xp, dy, kernel_hw, strides)


def _per_tap_kernel_grad(xp: jax.Array, dy: jax.Array, kernel_hw: Sequence[int], strides: Sequence[int]) -> jax.Array:
  (kh, kw), (sh, sw), (batch, oh, ow, channels) = kernel_hw, strides, dy.shape
  return jnp.stack([jnp.stack([jnp.sum(
      lax.slice(xp, (0, i, j, 0), (batch, i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1, channels), (1, sh, sw, 1))
      * dy, axis=(0, 1, 2), dtype=jnp.float32) for j in range(kw)]) for i in range(kh)])


def _fft_kernel_grad(xp: jax.Array, dy: jax.Array, kernel_hw: Sequence[int],
                     padding: Sequence[Sequence[int]]) -> jax.Array:
  (kh, kw), (oh, ow) = kernel_hw, dy.shape[1:3]
  # Zero-padding both to the transform size keeps the correlation from wrapping: h + i ≤ oh - 1 + kh - 1 < size.
  size = tuple(scipy.fft.next_fast_len(n, real=True) for n in xp.shape[1:3])  # 62 → 64: 1.4x faster
  spectrum = lambda a: jnp.fft.rfft2(jnp.transpose(a.astype(jnp.float32), (0, 3, 1, 2)), s=size)  # [B, C, ...]
  correlation = jnp.fft.irfft2(jnp.einsum('bcuv,bcuv->cuv', spectrum(xp), jnp.conj(spectrum(dy))), s=size)
  # A tap whose window lies wholly in the padding (a map smaller than the kernel) has an exact zero gradient; the FFT
  # leaves rounding noise there, which Adam would turn into full-size updates.
  sees_data = [[i + out > before and i < padded - after for i in range(k)]
               for k, out, padded, (before, after) in zip((kh, kw), (oh, ow), xp.shape[1:3], padding)]
  return jnp.where(np.outer(*sees_data)[:, :, None], jnp.transpose(correlation[:, :kh, :kw], (1, 2, 0)), 0.0)


def _backward(strides, padding, residuals, dy):
  x, kernel = residuals
  xp = lax.optimization_barrier(_pad(x, padding))  # as in the forward: x's producer computed once, not per tap
  (kh, kw), (sh, sw), (hp, wp) = kernel.shape[:2], strides, xp.shape[1:3]
  oh, ow = dy.shape[1:3]
  # The input gradient is a full correlation of the stride-dilated dy with the flipped kernel.
  dilated = lax.pad(dy, jnp.zeros((), dy.dtype), ((0, 0, 0), (kh - 1, hp - (oh - 1) * sh - 1, sh - 1),
                                                  (kw - 1, wp - (ow - 1) * sw - 1, sw - 1), (0, 0, 0)))
  dxp = _shifted_sum(dilated, kernel[::-1, ::-1], (1, 1), (hp, wp))
  dx = _pad(dxp, tuple((-a, -b) for a, b in padding))
  return dx, _kernel_grad(xp, dy, (kh, kw), strides, padding).astype(kernel.dtype)


shift_depthwise_conv.defvjp(_forward, _backward)
