"""Large-kernel depthwise convolution: the Pallas kernel against lax.conv_general_dilated, kernel sizes 7..31.

  python -m benchmarks.depthwise_conv [--kernels 7 13 31] [--shape 8 56 56 128]

Prints one JSON object per (kernel size, method, pass), then a summary with the checks. Per row: FLOPs (XLA's cost
analysis for lax; the kernel's own model, its `pl.CostEstimate`, for Pallas, which counts the padded tiles it really
computes), the compiled program's memory (XLA memory analysis) and, off the CPU or for lax, the time of the forward
pass and of forward + backward. On the CPU the Pallas kernel runs in interpret mode, whose time says nothing about
the kernel, so it is not reported. Exit status 1 when a check fails:
  - XLA's FLOPs for lax are exactly the taps that land inside the image (2 per multiply-add), so they grow with the
    kernel area less the zero padding,
  - the kernel's FLOP model agrees with XLA's count (the kernel also computes the taps on the zero padding and the
    padded tiles: the ratio lies in [1, 2]).
The summary also gives XLA's FLOPs of lax's forward + backward over its forward (3 would be dx and dw at forward cost).
"""
import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from vision_models import kernels
from vision_models.kernels import _conv_common as cc
from vision_models.kernels import depthwise_conv as dc


def pallas_flops(shape: tuple[int, ...], k: int) -> int:
  """Multiply-adds the kernel issues: padded row blocks x padded width x padded channels x taps."""
  n, h, w, c = shape
  lay = dc._layout(h, w, c, k, k, 4, cc.TPU if jax.default_backend() != 'gpu' else cc.GPU)
  return 2 * n * lay['nh'] * lay['hb'] * lay['wo'] * lay['cp'] * k * k


def valid_taps(size: int, k: int) -> int:
  """Σ over output positions of the kernel taps that fall inside the image ('SAME' padding, stride 1)."""
  pad = dc.same_padding(k)
  return sum(min(size, i - pad + k) - max(0, i - pad) for i in range(size))


def timed(fn, *args, reps: int = 3) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure(method: str, conv, x, w, k: int, passes: str, max_timed_flops: float) -> dict:
  if passes == 'fwd':
    fn = conv
  else:
    fn = jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1))
  compiled = jax.jit(fn).lower(x, w).compile()
  cost, mem = compiled.cost_analysis() or {}, compiled.memory_analysis()
  row = dict(bench='depthwise_conv', method=method, passes=passes, kernel=k, shape=list(x.shape),
             backend=jax.default_backend(), temp_bytes=mem.temp_size_in_bytes,
             argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes)
  if method == 'pallas':
    row['flops'] = pallas_flops(x.shape, k) * (1 if passes == 'fwd' else 3)
    row['flops_source'] = 'kernel model (pl.CostEstimate)'
  else:
    row['flops'], row['flops_source'] = int(cost.get('flops', 0)), 'XLA cost analysis'
  if method == 'pallas' and jax.default_backend() == 'cpu':
    row['time_s'] = None
    row['note'] = 'interpret mode on the CPU: its time and memory describe the interpreter, not the kernel'
  elif row['flops'] > max_timed_flops:
    row['time_s'], row['note'] = None, f'not timed: over --max-timed-flops={max_timed_flops:g}'
  else:
    row['time_s'] = timed(compiled, x, w)
  return row


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--kernels', type=int, nargs='+', default=[7, 13, 21, 31])
  parser.add_argument('--shape', type=int, nargs=4, default=[2, 56, 56, 128], metavar=('N', 'H', 'W', 'C'))
  parser.add_argument('--max-timed-flops', type=float, default=1e10, help="XLA:CPU's grouped-conv gradient is slow")
  args = parser.parse_args()

  rows = []
  x = jax.random.normal(jax.random.key(0), tuple(args.shape))
  for k in args.kernels:
    w = jax.random.normal(jax.random.key(1), (k, k, args.shape[-1])) / k
    for method, conv in [('pallas', kernels.depthwise_conv2d), ('lax', kernels.depthwise_conv2d_reference)]:
      for passes in ('fwd', 'fwd+bwd'):
        rows.append(measure(method, conv, x, w, k, passes, args.max_timed_flops))
        print(json.dumps(rows[-1]), flush=True)

  def flops(method, passes, k):
    return next(r['flops'] for r in rows if (r['method'], r['passes'], r['kernel']) == (method, passes, k))

  n, h, w, c = args.shape
  checks = {
      'lax_flops_are_the_valid_taps': all(
          abs(flops('lax', 'fwd', k) / (2 * n * c * valid_taps(h, k) * valid_taps(w, k)) - 1) < 0.02
          for k in args.kernels),
      'pallas_model_matches_xla_count': all(
          1.0 <= flops('pallas', 'fwd', k) / flops('lax', 'fwd', k) <= 2.0 for k in args.kernels),
  }
  bwd_ratio = {k: flops('lax', 'fwd+bwd', k) / flops('lax', 'fwd', k) for k in args.kernels}
  print(json.dumps(dict(bench='depthwise_conv', summary=True, lax_fwd_bwd_over_fwd_flops=bwd_ratio,
                        checks=checks, passed=all(checks.values()),
                        note='CPU: FLOPs and memory are the honest figures; times only for lax')))
  return 0 if all(checks.values()) else 1


if __name__ == '__main__':
  raise SystemExit(main())
