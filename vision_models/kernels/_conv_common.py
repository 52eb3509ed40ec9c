"""Plumbing shared by the convolution kernels: interpret-mode default and per-platform compiler parameters.

One `pl.pallas_call` source serves TPU (Mosaic) and GPU (Triton); only the compiler parameters and a few block-shape
rules differ. `lax.platform_dependent` picks the variant at lowering time, so `jax.export(..., platforms=['tpu'])`
on a CPU machine lowers the TPU variant for real.
"""
import functools
from typing import Any, Callable

import jax
from jax import lax
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

INTERPRET, TPU, GPU = 'interpret', 'tpu', 'gpu'


def resolve_interpret(interpret: bool | None) -> bool:
  """`None` means interpret mode exactly when the default backend is the CPU (Pallas cannot compile for it)."""
  return jax.default_backend() == 'cpu' if interpret is None else bool(interpret)


def compiler_params(platform: str, dimension_semantics: tuple[str, ...]) -> Any:
  if platform == TPU:
    return pltpu.CompilerParams(dimension_semantics=dimension_semantics)
  if platform == GPU:
    return pltriton.CompilerParams(num_warps=4, num_stages=2)
  return None


def per_platform(fn: Callable[..., Any], *args: Any, interpret: bool) -> Any:
  """`fn(*args, platform=...)` for the platform the computation is lowered for (`INTERPRET` in interpret mode).

  Off TPU/GPU without interpret mode the TPU variant is chosen, and Pallas itself reports that the CPU needs
  interpret mode.
  """
  if interpret:
    return fn(*args, platform=INTERPRET)
  tpu, gpu = functools.partial(fn, platform=TPU), functools.partial(fn, platform=GPU)
  return lax.platform_dependent(*args, tpu=tpu, cuda=gpu, rocm=gpu, default=tpu)


def next_pow2(n: int) -> int:
  return 1 << max(int(n) - 1, 0).bit_length()


def round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def out_struct(shape: tuple[int, ...], dtype: Any, *inputs: jax.Array) -> jax.ShapeDtypeStruct:
  """A `pallas_call` output type. Under `shard_map` it must name the mesh axes it varies over: those of its inputs."""
  varying = frozenset().union(*(jax.typeof(x).manual_axis_type.varying for x in inputs))
  return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=jax.sharding.ManualAxisType(varying=varying))


def reduce_to(grad: jax.Array, primal: jax.Array) -> jax.Array:
  """Sums a cotangent over the mesh axes it varies over and its primal does not (a kernel replicated under
  `shard_map` gets the sum of every shard's gradient)."""
  extra = jax.typeof(grad).manual_axis_type.varying - jax.typeof(primal).manual_axis_type.varying
  return lax.psum(grad, tuple(sorted(extra))) if extra else grad
