"""Convolutions XLA:CPU differentiates slowly, rewritten as matrix products: a drop-in `conv_general_dilated` for
`nn.Conv`.

A 1×1 convolution, or one whose kernel equals its stride (ViT's patch embedding, ConvNeXt's stem and downsampling),
is a matrix product over non-overlapping patches. XLA:CPU nevertheless differentiates it as a convolution whose
window is the whole image, and computes that kernel gradient about 10x slower than the same product (787 against
83 ms for MaxViT's first 1×1 conv, 8×112×112×64 → 256). Written as a product, the gradients are products too.

Other dense stride-1 convolutions (MaxViT's 3×3 stem conv) keep XLA's forward pass and input gradient, but on the
CPU their kernel gradient, 640 ms for 8×112×112×64 → 64 in XLA, is computed as one product in 120 ms (see
`_kernel_grad`). Parameters keep `nn.Conv`'s names and shapes, so checkpoints and weight conversion are unchanged;
other convolutions go to `lax.conv_general_dilated` as before.

Only on the CPU: on an H100, ViT-B/16's patch embedding as patchify + product made the bfloat16 train step 9 ms
slower than cuDNN's strided convolution (89.1 against 80.3 ms, benchmarks/RESULTS.md), so other backends keep `lax`'s
convolution throughout.
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vision_models.models import cpu_dot


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
  """`lax.conv_general_dilated`; on the CPU a matrix product when the kernel tiles the (unpadded) NHWC input in whole
  patches."""
  kernel = rhs.shape[:-2]
  conv = functools.partial(lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                           dimension_numbers, feature_group_count, batch_group_count, precision,
                           preferred_element_type)
  nhwc = ('NHWC', 'HWIO', 'NHWC')
  if (jax.default_backend() != 'cpu' or lhs.ndim != 4 or feature_group_count != 1 or batch_group_count != 1
      or any(d != 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
      or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
      != lax.conv_dimension_numbers(lhs.shape, rhs.shape, nhwc)):
    return conv()
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], kernel, window_strides, padding)
  padding = tuple(tuple(p) for p in padding)
  if tuple(kernel) == tuple(window_strides) and padding == ((0, 0), (0, 0)):
    return _patch_product(lhs, rhs, precision, preferred_element_type)
  if tuple(window_strides) == (1, 1) and preferred_element_type is None and min(sum(padding, ())) >= 0:
    return _conv_product_kernel_grad(lhs, rhs, padding, precision)
  return conv()


def _patch_product(x: jax.Array, kernel: jax.Array, precision: Any, preferred_element_type: Any) -> jax.Array:
  """The convolution of NHWC `x` with an HWIO kernel whose size is its stride, as one product over patches."""
  (p, q), (b, h, w, c) = kernel.shape[:2], x.shape
  x = x[:, :h // p * p, :w // q * q]  # VALID drops the rows and columns no patch covers
  if (p, q) != (1, 1):
    # A patch row's q·c values are contiguous: moved as one unit, XLA:CPU copies 4.5x faster than the 6-D transpose
    # (0.8 against 3.7 ms for ViT's 8×224×224×3 input).
    x = x.reshape(b * (h // p), p, w // q, q * c).transpose(0, 2, 1, 3).reshape(b, h // p, w // q, p * q * c)
  return cpu_dot.dot_general(x, kernel.reshape(p * q * c, kernel.shape[-1]), (((3,), (0,)), ((), ())),
                             precision=precision, preferred_element_type=preferred_element_type)


def _lax_conv(x: jax.Array, kernel: jax.Array, padding, precision) -> jax.Array:
  return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_product_kernel_grad(x: jax.Array, kernel: jax.Array, padding, precision) -> jax.Array:
  """A stride-1 NHWC convolution (`lax`'s) whose kernel gradient is one matrix product."""
  return _lax_conv(x, kernel, padding, precision)


def _forward(x, kernel, padding, precision):
  return _lax_conv(x, kernel, padding, precision), (x, kernel)


def _kernel_grad(x: jax.Array, dy: jax.Array, kernel_hw: Sequence[int], padding, precision) -> jax.Array:
  """dW[i, j] = Σ_{b,h,w} x_pad[b, h + i, w + j] ⊗ dy[b, h, w], for all taps as one product.

  With u = h + i, this is Σ_{b,u,w} x_pad[b, u, w + j] ⊗ dy_i[b, u, w], where dy_i is dy moved down i rows in a
  zero frame as tall as x_pad. So the kw column-shifted copies of x_pad, side by side in channels, times the kh
  row-shifted copies of dy, side by side, give every tap at once: kh + kw copies instead of the kh·kw of im2col and
  no wasted products.
  """
  (kh, kw), (_, oh, ow, _) = kernel_hw, dy.shape
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  hp = xp.shape[1]  # = oh + kh - 1 at stride 1
  shifted_x = jnp.concatenate([xp[:, :, j:j + ow] for j in range(kw)], axis=-1)  # [b, hp, ow, kw·cin]
  shifted_dy = jnp.concatenate([jnp.pad(dy, ((0, 0), (i, hp - oh - i), (0, 0), (0, 0))) for i in range(kh)], -1)
  rows = x.shape[0] * hp * ow
  grad = lax.dot_general(shifted_x.reshape(rows, -1), shifted_dy.reshape(rows, -1), (((0,), (0,)), ((), ())),
                         precision=precision, preferred_element_type=jnp.float32)  # [(j, cin), (i, cout)]
  return grad.reshape(kw, x.shape[-1], kh, dy.shape[-1]).transpose(2, 0, 1, 3)


def _backward(padding, precision, residuals, dy):
  x, kernel = residuals
  input_grad = jax.linear_transpose(lambda x: _lax_conv(x, kernel, padding, precision), x)
  return input_grad(dy)[0], _kernel_grad(x, dy, kernel.shape[:2], padding, precision).astype(kernel.dtype)


_conv_product_kernel_grad.defvjp(_forward, _backward)

Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
Conv.__doc__ = ('`nn.Conv` whose pointwise and patch convolutions, and the kernel gradients of its other stride-1 '
                'convolutions on the CPU, run as matrix products (same parameters).')
