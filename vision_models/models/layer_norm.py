"""LayerNorm over the last axis with its own backward pass.

Autodiff of `nn.LayerNorm` differentiates its fast-variance form `E[x²] - E[x]²` term by term, and XLA:CPU spends
more passes over the activations on that than the textbook gradient needs (ViT-S/16's train step on 2 CPU cores:
1.494 → 1.471 s with this one). Here the forward keeps only the input and the per-row mean and reciprocal deviation,
and the backward is the closed form `dx = r (g·s - mean(g·s) - x̂ mean(g·s·x̂))` (with `x̂ = (x - mean) r`), as
PyTorch's kernel computes it.
Statistics are two-pass (mean, then the mean square of the centred input) and in float32 for low-precision inputs.
The parameters (`scale`, `bias`) and the module's automatic name (`LayerNorm_N`) are those of `nn.LayerNorm`.

`FusedLayerNorm` has the same parameters and runs the Pallas kernels of `kernels.layer_norm` (GPU; interpreted on the
CPU), with the residual add before the norm in the same pass.
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vision_models import kernels

Dtype = Any


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _normalise(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, dtype: Dtype) -> jax.Array:
  """`(x - mean) / sqrt(var + epsilon) * scale + bias` over the last axis, returned in `dtype`."""
  return _forward(x, scale, bias, epsilon, dtype)[0]


def _forward(x, scale, bias, epsilon, dtype):
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  centred = x32 - mean
  rstd = lax.rsqrt((centred * centred).mean(-1, keepdims=True) + epsilon)
  return (centred * rstd * scale + bias).astype(dtype), (x, mean, rstd, scale)


def _backward(epsilon, dtype, residuals, g):
  x, mean, rstd, scale = residuals
  normed = (x.astype(jnp.float32) - mean) * rstd
  g = g.astype(jnp.float32)
  gs = g * scale
  dx = rstd * (gs - gs.mean(-1, keepdims=True) - normed * (gs * normed).mean(-1, keepdims=True))
  rows = tuple(range(x.ndim - 1))
  return dx.astype(x.dtype), (g * normed).sum(rows).astype(scale.dtype), g.sum(rows).astype(scale.dtype)


_normalise.defvjp(_forward, _backward)


class LayerNorm(nn.Module):
  """Drop-in for `nn.LayerNorm(epsilon, use_bias, dtype, scale_init, bias_init)` over the last axis.

  Without `dtype` the output takes the promoted type of the input and the (float32) parameters, as Flax's does.
  """
  epsilon: float = 1e-6
  use_bias: bool = True
  dtype: Dtype | None = None
  scale_init: Callable[..., jax.Array] = nn.initializers.ones
  bias_init: Callable[..., jax.Array] = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale, bias = self.scale_and_bias(x.shape[-1])
    return _normalise(x, scale, bias, self.epsilon, self.dtype or jnp.result_type(x, scale))

  def scale_and_bias(self, features: int) -> tuple[jax.Array, jax.Array]:
    """The float32 parameters (zeros for the bias without one); call from `__call__`."""
    scale = self.param('scale', self.scale_init, (features,), jnp.float32)
    bias = (self.param('bias', self.bias_init, (features,), jnp.float32) if self.use_bias
            else jnp.zeros((features,), jnp.float32))
    return scale, bias


class FusedLayerNorm(LayerNorm):
  """`LayerNorm` by the Pallas kernels; `norm(x, residual)` returns `(x + residual, LayerNorm(x + residual))`."""

  @nn.compact
  def __call__(self, x: jax.Array, residual: jax.Array | None = None) -> jax.Array | tuple[jax.Array, jax.Array]:
    scale, bias = self.scale_and_bias(x.shape[-1])
    dtype = self.dtype or jnp.result_type(x, scale)
    interpret = jax.default_backend() == 'cpu'
    if residual is None:
      return kernels.layer_norm(x, scale, bias, self.epsilon, interpret).astype(dtype)
    s, y = kernels.add_layer_norm(x, residual.astype(x.dtype), scale, bias, self.epsilon, interpret)
    return s, y.astype(dtype)
