"""Long convolution: the fused Monarch FFT kernel against direct convolution and jnp.fft, lengths 1K..64K.

  python -m benchmarks.long_conv [--lengths 1024 4096 ...] [--channels 64] [--batch 1] [--causal]

Prints one JSON object per (length, method), then a summary with the checks. Per method: FLOPs (XLA's cost analysis;
for the Pallas kernel the kernel's own model, the figure its `pl.CostEstimate` gives XLA), the compiled program's
memory (XLA memory analysis: arguments, outputs, temporaries) and, where it means something, the forward time. On the
CPU the Pallas kernel runs in interpret mode, whose time says nothing about the kernel, so it is not reported; direct
convolution is timed only while it stays under --max-direct-flops. Exit status 1 when a check fails:
  - jnp.fft FLOPs grow like N log N and direct convolution like L·K (K grows with L: quadratically),
  - the Monarch kernel's FLOPs grow at most like N·√N (two dense stages of ~√N) and slower than direct convolution's,
  - the FFT paths' temporary memory grows at most linearly with the length.
"""
import argparse
import importlib
import json
import math
import statistics
import time

import jax

from vision_models import kernels

lc = importlib.import_module('vision_models.kernels.long_conv')  # The package attribute is the function.


def fft_size(length: int, klen: int, causal: bool) -> int:
  """The kernel's FFT size: the linear convolution must not wrap onto the output window."""
  shift = 0 if causal else klen // 2
  return lc.fft_size(max(shift + length, length + klen - 1 - shift))


def monarch_flops(batch: int, length: int, klen: int, channels: int, causal: bool) -> int:
  """Forward FLOPs of the fused kernel: per (example, channel) a forward DFT of u, the product and an inverse DFT,
  plus one forward DFT of the filter per channel (the batch block shares it; counted once here)."""
  n = fft_size(length, klen, causal)
  fwd, inv = lc.transform_flops(*lc.fft_factors(n))
  return batch * channels * (fwd + inv + 6 * n) + channels * fwd


def timed(fn, *args, reps: int = 3) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure(method: str, fn, u, k, args) -> dict:
  compiled = jax.jit(fn).lower(u, k).compile()
  cost, mem = compiled.cost_analysis() or {}, compiled.memory_analysis()
  row = dict(bench='long_conv', method=method, length=u.shape[1], kernel_length=k.shape[0], batch=u.shape[0],
             channels=u.shape[2], causal=args.causal, backend=jax.default_backend(),
             temp_bytes=mem.temp_size_in_bytes, argument_bytes=mem.argument_size_in_bytes,
             output_bytes=mem.output_size_in_bytes)
  interpreted = method == 'pallas' and jax.default_backend() == 'cpu'
  if method == 'pallas':
    row['flops'] = monarch_flops(u.shape[0], u.shape[1], k.shape[0], u.shape[2], args.causal)
    row['flops_source'] = 'kernel model (pl.CostEstimate)'
    row['fft_factors'] = lc.fft_factors(fft_size(u.shape[1], k.shape[0], args.causal))
  else:
    row['flops'], row['flops_source'] = int(cost.get('flops', 0)), 'XLA cost analysis'
  if interpreted:
    row['time_s'] = None
    row['note'] = 'interpret mode on the CPU: its time and memory describe the interpreter, not the kernel'
  elif method == 'direct' and row['flops'] > args.max_direct_flops:
    row['time_s'], row['note'] = None, f'not timed: over --max-direct-flops={args.max_direct_flops:g}'
  else:
    row['time_s'] = timed(compiled, u, k)
  return row


def growth(rows: list[dict], method: str, key: str) -> float:
  picked = sorted((r for r in rows if r['method'] == method), key=lambda r: r['length'])
  return picked[-1][key] / max(picked[0][key], 1)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--lengths', type=int, nargs='+', default=[2 ** p for p in range(10, 17)])
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--channels', type=int, default=16)
  parser.add_argument('--causal', action='store_true', help='causal filter of length L (default: centred, 2L - 1)')
  parser.add_argument('--max-direct-flops', type=float, default=1e8, help='XLA:CPU grouped convolution is slow')
  args = parser.parse_args()

  rows = []
  for length in args.lengths:
    klen = length if args.causal else 2 * length - 1
    u = jax.random.normal(jax.random.key(0), (args.batch, length, args.channels))
    k = jax.random.normal(jax.random.key(1), (klen, args.channels)) / math.sqrt(klen)
    for method, fn in [('pallas', lambda u, k: kernels.long_conv(u, k, causal=args.causal)),
                       ('fft', lambda u, k: kernels.long_conv_fft(u, k, causal=args.causal)),
                       ('direct', lambda u, k: kernels.long_conv_direct(u, k, causal=args.causal))]:
      rows.append(measure(method, fn, u, k, args))
      print(json.dumps(rows[-1]), flush=True)

  lo, hi = min(args.lengths), max(args.lengths)
  nlogn = (hi * math.log2(2 * hi)) / (lo * math.log2(2 * lo))
  quadratic = (hi / lo) ** 2
  checks = {
      'fft_flops_grow_like_n_log_n': 0.5 * nlogn <= growth(rows, 'fft', 'flops') <= 2 * nlogn,
      'direct_flops_grow_like_l_times_k': 0.5 * quadratic <= growth(rows, 'direct', 'flops') <= 2 * quadratic,
      'monarch_flops_grow_at_most_n_sqrt_n': growth(rows, 'pallas', 'flops') <= 2 * (hi / lo) ** 1.5,
      'monarch_flops_grow_slower_than_direct': growth(rows, 'pallas', 'flops') < growth(rows, 'direct', 'flops'),
      'fft_temp_memory_at_most_linear': growth(rows, 'fft', 'temp_bytes') <= 2 * hi / lo,
  }
  if len(args.lengths) < 2:
    checks = {}
  print(json.dumps(dict(bench='long_conv', summary=True, length_growth=hi / lo, n_log_n_growth=nlogn,
                        flops_growth={m: growth(rows, m, 'flops') for m in ('pallas', 'fft', 'direct')},
                        checks=checks, passed=all(checks.values()),
                        note='CPU: FLOPs and memory are the honest figures; times only for XLA paths')))
  return 0 if all(checks.values()) else 1


if __name__ == '__main__':
  raise SystemExit(main())
