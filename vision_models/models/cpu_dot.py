"""`lax.dot_general` whose weight gradient, on the CPU, is one 2-D product over the flattened positions.

A dense layer's (or a 1×1 conv's) weight gradient contracts the input with the output gradient over all positions.
JAX's transpose rule writes it as the product of the output gradient with the input followed by a transpose of the
small result; XLA:CPU folds that transpose into the operands' layouts, writes the whole output gradient transposed
first and the product reading it runs at a third of the speed (ConvNeXt-T's first-stage [25088, 384] gradient: 42
against 15 ms); where the gradient came out of an elementwise pass (a BatchNorm's, a GELU's), XLA fused the transpose
into it, reading its inputs with a stride of a row per element (MaxViT-T's [100352, 256] BatchNorm gradient: 347 ms).
Written as `x[n, c]ᵀ · dy[n, f]` over the flattened positions n, the product reads both operands as stored: train
steps ConvNeXt-T 2.07 → 1.93 s, MaxViT-T 3.46 → 3.18 s, Mixer-B/16 4.40 → 4.19 s, the same values.

Only the dense form (the lhs contracts its trailing dimensions, the rhs its leading ones, no batch dimensions) is
rewritten; other forms and other backends get `lax.dot_general` unchanged.

`hidden_chunks` says in how many pieces `layers.Mlp` computes its hidden layer on the CPU.
"""
import functools
import math
from typing import Any

import flax.linen as nn
import jax
from jax import lax

# YNNPACK runs a product narrowing a long contraction slower than MKL does (Mixer-B/16's fc2, [1568, 3072] · [3072,
# 768]: 44.6 ms alone, four products over 768 of the 3072 summed: 41.6 ms); pieces of up to 768 hidden units made
# Mixer-B/16's train step 4.07 → 3.92 s and left ViT-S/16, ConvNeXt-T and MaxViT-T as they were
# (benchmarks/RESULTS.md).
HIDDEN_CHUNK = 768


def hidden_chunks(hidden: int, axis: str | None) -> int:
  """How many pieces an MLP computes its `hidden` units in: on the CPU the fewest of at most `HIDDEN_CHUNK` units,
  unless the logical `axis` of the hidden units is split across devices (tensor parallelism); 1 elsewhere."""
  if jax.default_backend() != 'cpu' or hidden <= HIDDEN_CHUNK or (axis is not None and _split_across_devices(axis)):
    return 1
  return -(-hidden // HIDDEN_CHUNK)


def _split_across_devices(axis: str) -> bool:
  """Whether the active logical axis rules map `axis` to mesh axes holding more than one device."""
  mesh_axes = nn.logical_to_mesh_axes((axis,))[0]
  mesh = jax.sharding.get_abstract_mesh()
  if mesh_axes is None or mesh.empty:
    return False
  names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
  return math.prod(mesh.shape.get(name, 1) for name in names) > 1


def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`x [..., in] · kernel [in, out]` through `dot_general`."""
  return dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any, precision: Any = None,
                preferred_element_type: Any = None, **kwargs) -> jax.Array:
  """`lax.dot_general`; on the CPU a dense layer's weight gradient is a single product over the positions."""
  numbers = _hashable(dimension_numbers)
  if jax.default_backend() != 'cpu' or any(v is not None for v in kwargs.values()) or not _dense_form(
      numbers, lhs.ndim):
    return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type, **kwargs)
  return _dense_dot(lhs, rhs, numbers, precision, preferred_element_type)


def _hashable(dimension_numbers: Any) -> tuple:
  return tuple(tuple(tuple(axes) for axes in pair) for pair in dimension_numbers)


def _dense_form(dimension_numbers: tuple, lhs_ndim: int) -> bool:
  (lhs_contracting, rhs_contracting), batch = dimension_numbers
  k = len(lhs_contracting)
  return (not any(batch) and lhs_contracting == tuple(range(lhs_ndim - k, lhs_ndim))
          and rhs_contracting == tuple(range(k)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _dense_dot(lhs, rhs, dimension_numbers, precision, preferred_element_type):
  return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)


def _forward(lhs, rhs, dimension_numbers, precision, preferred_element_type):
  return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type), (lhs, rhs)


def _backward(dimension_numbers, precision, preferred_element_type, residuals, grad):
  lhs, rhs = residuals
  dot = functools.partial(lax.dot_general, dimension_numbers=dimension_numbers, precision=precision,
                          preferred_element_type=preferred_element_type)
  lhs_grad = jax.linear_transpose(lambda lhs: dot(lhs, rhs), lhs)(grad)[0]
  positions = math.prod(lhs.shape[:lhs.ndim - len(dimension_numbers[0][0])])
  rhs_grad = lax.dot_general(lhs.reshape(positions, -1), grad.reshape(positions, -1), (((0,), (0,)), ((), ())),
                             precision, preferred_element_type)
  return lhs_grad, rhs_grad.reshape(rhs.shape).astype(rhs.dtype)


_dense_dot.defvjp(_forward, _backward)
