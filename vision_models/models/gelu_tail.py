"""`gelu_tanh(a + b1) · w2`, the second half of a tanh-GELU MLP, with the backward product by `kernels.dgelu_matmul`.

Autodiff computes `dy · w2ᵀ` with cuBLAS and multiplies by the activation's slope in a pass of its own; here one
Pallas kernel does both and sums the bias gradient as it goes (see `vision_models.kernels.gelu_matmul`). The forward
pass is autodiff's: XLA:GPU still puts bias and GELU in the epilogue of the product making `a`, keeping `pre = a + b1`
for the backward pass, and `h` is kept for `w2`'s gradient as autodiff keeps it.
"""
import flax.linen as nn
import jax
from jax import lax

from vision_models import kernels


def fits(a: jax.Array, w2: jax.Array) -> bool:
  """Whether the kernel takes these shapes (whole tiles)."""
  return kernels.dgelu_fits(a.size // a.shape[-1], w2.shape[0], w2.shape[1])


@jax.custom_vjp
def gelu_tail(a: jax.Array, b1: jax.Array, w2: jax.Array) -> jax.Array:
  """`gelu_tanh(a + b1) · w2` over the last axis of `a [..., hidden]`; `w2 [hidden, out]`."""
  return _forward(a, b1, w2)[0]


def _forward(a, b1, w2):
  pre = a + b1
  h = nn.gelu(pre, approximate=True)
  return lax.dot_general(h, w2, (((h.ndim - 1,), (0,)), ((), ()))), (pre, h, w2, b1)


def _backward(saved, dy):
  pre, h, w2, b1 = saved
  hidden, out = w2.shape
  rows = dy.reshape(-1, out)
  d_pre, d_b1 = kernels.dgelu_matmul(rows, w2, pre.reshape(-1, hidden), interpret=jax.default_backend() == 'cpu')
  d_w2 = lax.dot_general(h.reshape(-1, hidden), rows, (((0,), (0,)), ((), ())))
  return d_pre.reshape(pre.shape), d_b1.astype(b1.dtype), d_w2.astype(w2.dtype)


gelu_tail.defvjp(_forward, _backward)
