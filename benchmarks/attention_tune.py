"""Chooses the flash kernels' GPU launches (tiles, warps, stages) by timing candidates against cuDNN on this GPU.

  python -m benchmarks.attention_tune [--seq 4096 --batch 4 --heads 16 --head-dim 64 --dtype bfloat16]
  python -m benchmarks.attention_tune --seq 197 --batch 256 --heads 12 --block-q 32,64,128 --block-k 64,128,256

Sweeps the forward kernel alone, then the dK/dV kernel and the dQ kernel inside the full forward + backward (each
with the best choice of the earlier sweeps), one JSON line per candidate, and ends with the best launches, their
fwd+bwd time, the ratio to cuDNN's (`kernels.attention(impl='cudnn')`, which pads lengths cuDNN refuses, such as
ViT's 197 tokens, as the models do) and the winner's relative error against a float32 reference (exit 1 above 2e-2).
The winner is what `vision_models.kernels.flash_launch.GPU_LAUNCH` (or `GPU_LAUNCH_SHORT`) should hold.
`--block-q`, `--block-k`, `--warps` and `--stages` (comma lists) narrow every kernel's sweep. Needs a GPU (Triton): on
the CPU it exits 2.
"""
import argparse
import itertools
import json
import sys

import jax
import jax.numpy as jnp

from benchmarks.attention import flops, fwd_bwd, time_it
from vision_models.kernels import Launch, attention, flash_attention, reference_attention
from vision_models.kernels.flash_launch import gpu_table

SWEEPS = {  # choices of block_q, block_k, num_warps, num_stages
    'fwd': ((64, 128), (32, 64, 128), (4, 8), (2, 3, 4, 5)),
    'dkv': ((16, 32, 64, 128), (64, 128), (4, 8), (2, 3, 4, 5)),
    'dq': ((64, 128), (16, 32, 64, 128), (4, 8), (2, 3, 4, 5)),
}
MAX_RELATIVE_ERROR = 2e-2  # bf16 inputs, float32 accumulation: errors land near 1e-2 at most


def timed(fn, shape, dtype, repeats: int, backward: bool) -> float:
  inputs = [jax.random.normal(jax.random.key(i), shape, dtype) for i in range(4)]
  if backward:
    return time_it(fwd_bwd(fn).lower(*inputs).compile(), inputs, repeats)
  return time_it(jax.jit(fn).lower(*inputs[:3]).compile(), inputs[:3], repeats)


def relative_errors(fn, shape, dtype) -> list[float]:
  """‖ours − ref‖ / ‖ref‖ of (out, dq, dk, dv), the reference in float32 on the same (rounded) inputs."""
  inputs = [jax.random.normal(jax.random.key(10 + i), shape, dtype) for i in range(4)]
  ours = fwd_bwd(fn)(*inputs)
  ref = fwd_bwd(reference_attention)(*[x.astype(jnp.float32) for x in inputs])
  return [float(jnp.linalg.norm(a.astype(jnp.float32) - b) / jnp.linalg.norm(b)) for a, b in zip(ours, ref)]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--seq', type=int, default=4096)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--heads', type=int, default=16)
  parser.add_argument('--head-dim', type=int, default=64)
  parser.add_argument('--dtype', default='bfloat16', choices=['float32', 'bfloat16'])
  parser.add_argument('--repeats', type=int, default=20)
  for flag in ('block-q', 'block-k', 'warps', 'stages'):
    parser.add_argument(f'--{flag}', default=None, help=f'comma list replacing the sweeps\' {flag} choices')
  args = parser.parse_args(argv)
  narrowed = [None if value is None else tuple(int(x) for x in value.split(','))
              for value in (args.block_q, args.block_k, args.warps, args.stages)]
  sweeps = {kernel: tuple(n or c for n, c in zip(narrowed, choices)) for kernel, choices in SWEEPS.items()}
  if jax.default_backend() != 'gpu':
    print('attention_tune needs a GPU: the Triton launch parameters mean nothing elsewhere', file=sys.stderr)
    return 2
  shape, dtype = (args.batch, args.seq, args.heads, args.head_dim), jnp.dtype(args.dtype)
  base = {'seq': args.seq, 'batch': args.batch, 'heads': args.heads, 'head_dim': args.head_dim, 'dtype': args.dtype,
          'device': jax.devices()[0].device_kind}
  work = flops(args.batch, args.heads, args.seq, args.head_dim)['flops']
  cudnn = lambda q, k, v: attention(q, k, v, impl='cudnn')
  reference = {'fwd': timed(cudnn, shape, dtype, args.repeats, False),
               'fwd_bwd': timed(cudnn, shape, dtype, args.repeats, True)}
  print(json.dumps({**base, 'impl': 'cudnn', 'seconds': reference, 'tflops_per_s': work / reference['fwd_bwd'] / 1e12}),
        flush=True)
  best = dict(gpu_table(args.seq, args.seq))
  for kernel, choices in sweeps.items():
    results = []
    for tiles in itertools.product(*choices):
      launch = {**best, kernel: Launch(*tiles)}
      fn = lambda q, k, v, launch=launch: flash_attention(q, k, v, launch=launch)
      try:
        seconds = timed(fn, shape, dtype, args.repeats, backward=kernel != 'fwd')
      except Exception as error:  # e.g. a tile that needs more shared memory than the GPU has
        print(json.dumps({**base, 'kernel': kernel, 'launch': tiles, 'error': str(error).splitlines()[0][:200]}),
              flush=True)
        continue
      results.append((seconds, tiles))
      print(json.dumps({**base, 'kernel': kernel, 'launch': tiles, 'seconds': seconds}), flush=True)
    if results:
      best[kernel] = Launch(*min(results)[1])
  fn = lambda q, k, v: flash_attention(q, k, v, launch=best)
  errors = relative_errors(fn, shape, dtype)
  ours = {'fwd': timed(fn, shape, dtype, args.repeats, False), 'fwd_bwd': timed(fn, shape, dtype, args.repeats, True)}
  print(json.dumps({**base, 'impl': 'pallas_best', 'launch': {k: list(vars(v).values()) for k, v in best.items()},
                    'seconds': ours, 'tflops_per_s': work / ours['fwd_bwd'] / 1e12,
                    'fwd_bwd_over_cudnn': ours['fwd_bwd'] / reference['fwd_bwd'],
                    'fwd_over_cudnn': ours['fwd'] / reference['fwd'],
                    'relative_error_out_dq_dk_dv': errors}), flush=True)
  return 0 if max(errors) < MAX_RELATIVE_ERROR else 1


if __name__ == '__main__':
  sys.exit(main())
