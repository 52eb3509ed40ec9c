"""Attention's q, k, v projections: one product's backward pass, and off the CPU three products forward.

`project(x, kernel [embed, heads, 3, head_dim], bias [heads, 3, head_dim] | None)` returns q, k, v
`[..., heads, head_dim]`. As one product (`[..., embed] · [embed, heads·3·head_dim]`) the forward pass writes the
three interleaved, and attention kernels, which take each as its own array, need them sliced apart: another pass
reading and writing all three (ViT-B/16 at batch 256 on an H100: 467 MB a block, 5.6 GB a step). Off the CPU the
forward is three products, each written where attention reads it (cuBLAS adds the bias), for two more reads of x
(156 MB a block); the backward pass stays the one product, whose concatenated input XLA writes in the pass that sums
the bias gradient, so splitting it would only add passes. On the CPU both directions are the one product.
"""
import jax

from vision_models.models import cpu_dot


def _as_one_product(x, kernel, bias):
  qkv = cpu_dot.matmul(x, kernel.reshape(kernel.shape[0], -1))
  if bias is not None:  # added to the flat columns, which line up with the product's (cuBLAS takes it as a vector)
    qkv = qkv + bias.reshape(-1)
  qkv = qkv.reshape(*qkv.shape[:-1], *kernel.shape[1:])
  return tuple(qkv[..., i, :] for i in range(3))


@jax.custom_vjp
def _as_three_products(x, kernel, bias):
  dim, heads, _, head_dim = kernel.shape
  outputs = []
  for i in range(3):  # flat columns, the bias a vector over them: cuBLAS adds it (a [heads, head_dim] one it did not)
    y = cpu_dot.matmul(x, kernel[:, :, i].reshape(dim, heads * head_dim))
    y = y if bias is None else y + bias[:, i].reshape(-1)
    outputs.append(y.reshape(*y.shape[:-1], heads, head_dim))
  return tuple(outputs)


def _forward(x, kernel, bias):
  return _as_three_products(x, kernel, bias), (x, kernel, bias)


def _backward(saved, grads):
  x, kernel, bias = saved
  return jax.vjp(_as_one_product, x, kernel, bias)[1](grads)


_as_three_products.defvjp(_forward, _backward)


def project(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """q, k, v of `x [..., embed]` (see the module docstring)."""
  if jax.default_backend() == 'cpu':
    return _as_one_product(x, kernel, bias)
  return _as_three_products(x, kernel, bias)
