"""Real lowering of the convolution kernels without hardware: export for TPU (Mosaic) and CUDA (Triton) on the CPU.

Interpret mode accepts what cannot compile (unaligned TPU blocks, ops Mosaic or Triton lack, complex numbers);
exporting runs the Pallas → Mosaic and Pallas → Triton lowerings for real. It does not run Mosaic's or ptxas'
later passes, so it proves neither numerics nor that the kernel fits in VMEM / registers.
"""
import functools

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from vision_models import kernels

H100 = jax.sharding.AbstractDevice('NVIDIA H100 80GB HBM3', 132, 'gpu')


def export_text(fn, args, platform: str) -> str:
  if platform == 'tpu':
    return jax.export.export(jax.jit(fn), platforms=['tpu'])(*args).mlir_module()
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=H100)):
    triton = jax.export.DisabledSafetyCheck.custom_call('__gpu$xla.gpu.triton')
    return jax.export.export(jax.jit(fn), platforms=['cuda'], disabled_checks=[triton])(*args).mlir_module()


def fwd_and_bwd(fn):
  """The output and the gradients of every argument: one program holding the forward and backward kernels."""
  def run(*args):
    y, pull = jax.vjp(fn, *args)
    return (y,) + pull(y)
  return run


F32, BF16 = jnp.float32, jnp.bfloat16
CASES = {  # name: (function, argument shapes and dtypes, pallas_calls in forward + backward)
    'long_conv_4k': (functools.partial(kernels.long_conv, interpret=False), [((2, 4096, 256), F32), ((4096, 256), F32)],
                     3),
    'long_conv_64k_three_stage': (functools.partial(kernels.long_conv, causal=False, interpret=False),
                                  [((1, 65536, 8), BF16), ((65536, 8), F32)], 3),
    'long_conv2d': (functools.partial(kernels.long_conv2d, interpret=False), [((2, 14, 14, 384), BF16),
                                                                              ((27, 27, 384), F32)], 3),
    'depthwise_conv2d_31': (functools.partial(kernels.depthwise_conv2d, interpret=False),
                            [((2, 56, 56, 192), F32), ((31, 31, 192), F32)], 3),
    'depthwise_conv2d_7_bf16': (functools.partial(kernels.depthwise_conv2d, interpret=False),
                                [((2, 28, 28, 384), BF16), ((7, 7, 384), BF16)], 3),
}


@pytest.mark.parametrize('platform,marker', [('tpu', 'tpu_custom_call'), ('cuda', '__gpu$xla.gpu.triton')])
@pytest.mark.parametrize('name', list(CASES))
def test_export(name, platform, marker):
  fn, shapes, calls = CASES[name]
  args = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes]
  text = export_text(fwd_and_bwd(fn), args, platform)
  assert text.count(f'custom_call @{marker}(') == calls


@pytest.mark.parametrize('kernel,args', [
    (kernels.long_conv, [((8, 1024, 256), F32), ((1024, 256), F32)]),
    (kernels.depthwise_conv2d, [((8, 28, 28, 256), F32), ((7, 7, 256), F32)]),
])
def test_export_under_shard_map_with_varying_axes_checked(kernel, args):
  """Compiled kernels under shard_map keep check_vma on: outputs name their varying axes, the replicated filter's
  gradient is summed over the batch shards."""
  mesh = jax.sharding.AbstractMesh((4, 2), ('data', 'model'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  rank = len(args[0][0])
  x_spec, w_spec = P('data', *[None] * (rank - 2), 'model'), P(*[None] * (rank - 2), 'model')
  fn = jax.shard_map(functools.partial(kernel, interpret=False), mesh=mesh, in_specs=(x_spec, w_spec),
                     out_specs=x_spec)
  sds = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in args]
  with jax.sharding.use_abstract_mesh(mesh):
    text = jax.export.export(jax.jit(fwd_and_bwd(fn)), platforms=['tpu'])(*sds).mlir_module()
  assert text.count('custom_call @tpu_custom_call(') == 3
  assert 'stablehlo.all_reduce' in text  # The psum of the filter gradient over 'data'.
