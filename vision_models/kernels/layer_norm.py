"""LayerNorm over the last axis as one Pallas (Triton) pass each way, optionally fused with the residual add before it.

`add_layer_norm(x, residual, scale, bias)` returns `(s, layer_norm(s))` with `s = x + residual` rounded to x's dtype,
the pre-norm transformer's `x = x + branch; y = norm(x)`. XLA:GPU spends more passes on that than it needs: it reads
a row once for the statistics and again to normalise (a reduction cannot feed an elementwise op in one of its
kernels), folds the add into the producing cuBLAS call by overwriting the residual (which the backward pass still
needs, so it is copied first), and reads the cotangent and the input twice in the backward pass. Here each direction
reads and writes every row once: the forward reads x and the residual and writes s and y; the backward reads s, the
two cotangents and writes the one gradient x and the residual share. The backward pass recomputes the row statistics
from s in registers rather than storing them.

Each program owns whole rows (ViT's 768 features in 1024 masked lanes): the forward one row, the backward
`ROWS_PER_PROGRAM` rows, whose scale and bias gradients it sums into one partial row that XLA then adds up. Statistics
are two-pass and in float32, as `models.layer_norm.LayerNorm` computes them; `layer_norm_reference` is the XLA twin
the tests hold the kernels to. `interpret=True` runs them on the CPU.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

ROWS_PER_PROGRAM = 32  # backward: partial scale/bias gradients of 1/32 of the rows (ViT-B/16, batch 256: 2 × 6.5 MB)


def layer_norm_reference(x: jax.Array, residual: jax.Array | None, scale: jax.Array, bias: jax.Array,
                         epsilon: float) -> tuple[jax.Array, jax.Array]:
  """`(s, y)`: s = x + residual in x's dtype (x without one), y its LayerNorm in x's dtype, in float32 inside."""
  s = x if residual is None else (x + residual).astype(x.dtype)
  s32 = s.astype(jnp.float32)
  centred = s32 - s32.mean(-1, keepdims=True)
  rstd = lax.rsqrt((centred * centred).mean(-1, keepdims=True) + epsilon)
  return s, (centred * rstd * scale + bias).astype(x.dtype)


def _row(ref, row, lanes, features, mask):
  """Row `row` of a flattened [rows · features] ref in float32, zero in the masked lanes."""
  return pltriton.load(ref.at[row * features + lanes], mask=mask, other=0.0).astype(jnp.float32)


def _normalised(s, mask, features, epsilon):
  """x̂ of a row held in registers (zero in the masked lanes) and its reciprocal deviation."""
  centred = jnp.where(mask, s - s.sum() / features, 0.0)
  rstd = lax.rsqrt((centred * centred).sum() / features + epsilon)
  return centred * rstd, rstd


def _forward_kernel(*refs, features, lanes, epsilon, has_residual):
  if has_residual:
    x_ref, r_ref, scale_ref, bias_ref, s_ref, y_ref = refs
  else:
    x_ref, scale_ref, bias_ref, y_ref = refs
  row, cols = pl.program_id(0), jnp.arange(lanes)
  mask = cols < features
  s = _row(x_ref, row, cols, features, mask)
  if has_residual:  # the sum is stored in x's dtype, and normalised as stored
    s = (s + _row(r_ref, row, cols, features, mask)).astype(s_ref.dtype)
    pltriton.store(s_ref.at[row * features + cols], s, mask=mask)
    s = s.astype(jnp.float32)
  normed, _ = _normalised(s, mask, features, epsilon)
  scale = pltriton.load(scale_ref.at[cols], mask=mask, other=0.0)
  bias = pltriton.load(bias_ref.at[cols], mask=mask, other=0.0)
  pltriton.store(y_ref.at[row * features + cols], (normed * scale + bias).astype(y_ref.dtype), mask=mask)


def _backward_kernel(*refs, rows, features, lanes, epsilon, has_residual):
  if has_residual:
    s_ref, scale_ref, dy_ref, ds_ref, dx_ref, dscale_ref, dbias_ref = refs
  else:
    s_ref, scale_ref, dy_ref, dx_ref, dscale_ref, dbias_ref = refs
  program, cols = pl.program_id(0), jnp.arange(lanes)
  in_row = cols < features
  scale = pltriton.load(scale_ref.at[cols], mask=in_row, other=0.0)
  first = program * ROWS_PER_PROGRAM

  def one_row(i, sums):
    row = first + i
    mask = in_row & (row < rows)
    normed, rstd = _normalised(_row(s_ref, row, cols, features, mask), mask, features, epsilon)
    dy = _row(dy_ref, row, cols, features, mask)
    gs = dy * scale
    dx = rstd * (gs - gs.sum() / features - normed * ((gs * normed).sum() / features))
    if has_residual:
      dx = dx + _row(ds_ref, row, cols, features, mask)
    pltriton.store(dx_ref.at[row * features + cols], dx.astype(dx_ref.dtype), mask=mask)
    return sums[0] + dy * normed, sums[1] + dy

  dscale, dbias = lax.fori_loop(0, ROWS_PER_PROGRAM, one_row, (jnp.zeros(lanes), jnp.zeros(lanes)))
  dscale_ref[...] = dscale
  dbias_ref[...] = dbias


def _call(kernel, grid, out_shape, lanes, interpret, name, *args, out_specs=pl.no_block_spec):
  # Four warps for ViT-B's 1024 lanes, as Triton's LayerNorm tutorial sizes them (lanes / 256, in [1, 8]).
  params = None if interpret else pltriton.CompilerParams(num_warps=min(max(lanes // 256, 1), 8), num_stages=2)
  return pl.pallas_call(kernel, grid=grid, out_shape=out_shape, out_specs=out_specs, compiler_params=params,
                        interpret=interpret, name=name)(*args)


def _forward(x, residual, scale, bias, epsilon, interpret):
  features = x.shape[-1]
  rows, lanes = x.size // features, pl.next_power_of_2(features)
  flat = jax.ShapeDtypeStruct((x.size,), x.dtype)
  kernel = functools.partial(_forward_kernel, features=features, lanes=lanes, epsilon=epsilon,
                             has_residual=residual is not None)
  args = [x.reshape(-1)] + ([] if residual is None else [residual.reshape(-1)]) + [
      scale.astype(jnp.float32), bias.astype(jnp.float32)]
  out = _call(kernel, (rows,), [flat] * (1 if residual is None else 2), lanes, interpret, 'layer_norm_fwd', *args)
  s = x if residual is None else out[0].reshape(x.shape)
  return s, out[-1].reshape(x.shape)


def _backward(s, scale, dy, ds, epsilon, interpret):
  features = s.shape[-1]
  rows, lanes = s.size // features, pl.next_power_of_2(features)
  programs = pl.cdiv(rows, ROWS_PER_PROGRAM)
  kernel = functools.partial(_backward_kernel, rows=rows, features=features, lanes=lanes, epsilon=epsilon,
                             has_residual=ds is not None)
  partial = jax.ShapeDtypeStruct((programs, lanes), jnp.float32)
  out_shape = [jax.ShapeDtypeStruct((s.size,), s.dtype), partial, partial]
  args = [s.reshape(-1), scale.astype(jnp.float32), dy.reshape(-1)] + ([] if ds is None else [ds.reshape(-1)])
  partial_row = pl.BlockSpec((None, lanes), lambda i: (i, 0))  # each program's own row of the partial sums
  dx, dscale, dbias = _call(kernel, (programs,), out_shape, lanes, interpret, 'layer_norm_bwd', *args,
                            out_specs=[pl.no_block_spec, partial_row, partial_row])
  return dx.reshape(s.shape), dscale[:, :features].sum(0), dbias[:, :features].sum(0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def add_layer_norm(x: jax.Array, residual: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float = 1e-6,
                   interpret: bool = False) -> tuple[jax.Array, jax.Array]:
  """`(s, LayerNorm(s))` with `s = x + residual` (see the module docstring); scale and bias `[features]`."""
  return _forward(x, residual, scale, bias, epsilon, interpret)


def _add_forward(x, residual, scale, bias, epsilon, interpret):
  s, y = _forward(x, residual, scale, bias, epsilon, interpret)
  return (s, y), (s, scale, bias)


def _add_backward(epsilon, interpret, saved, cotangents):
  s, scale, bias = saved
  ds, dy = cotangents
  dx, dscale, dbias = _backward(s, scale, dy, ds, epsilon, interpret)
  return dx, dx, dscale.astype(scale.dtype), dbias.astype(bias.dtype)


add_layer_norm.defvjp(_add_forward, _add_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float = 1e-6,
               interpret: bool = False) -> jax.Array:
  """LayerNorm of x over its last axis in x's dtype (see the module docstring); scale and bias `[features]`."""
  return _forward(x, None, scale, bias, epsilon, interpret)[1]


def _plain_forward(x, scale, bias, epsilon, interpret):
  return _forward(x, None, scale, bias, epsilon, interpret)[1], (x, scale, bias)


def _plain_backward(epsilon, interpret, saved, dy):
  x, scale, bias = saved
  dx, dscale, dbias = _backward(x, scale, dy, None, epsilon, interpret)
  return dx, dscale.astype(scale.dtype), dbias.astype(bias.dtype)


layer_norm.defvjp(_plain_forward, _plain_backward)
