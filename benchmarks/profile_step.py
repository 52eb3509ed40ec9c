"""Where a train step's time goes: traces our step with `jax.profiler` and sums the device's op time by kind and name.

  python -m benchmarks.profile_step --model vit_b16 --batch 256 --dtype bfloat16 --attn-impl pallas [--steps 5]

Takes the same model flags as `benchmarks.train_step`. Prints one JSON line per op category (XLA's `hlo_category` where
the trace has it: matrix products, fusions, custom calls such as the Pallas kernels), per op kind (the name without its
number) and per op name for the `--top` most expensive ones, each with its share of the traced device time; keeps the
trace in `--trace-dir` (viewable in TensorBoard / XProf). On the CPU the XLA ops run on host threads and are summed
the same way.
"""
from vision_models import host_memory

if __name__ == '__main__':
  host_memory.reuse_freed_memory()  # as train.py does, before numpy, JAX or torch start threads

import argparse  # noqa: E402
import collections
import glob
import json
import re
import sys
import tempfile

import jax
from jax.profiler import ProfileData

from benchmarks import train_step

SKIPPED_LINES = ('XLA Modules', 'Steps', 'python', 'XLA TraceMe', 'Source code', 'Framework')


def op_events(path: str):
  """(name, category, source, seconds) of every XLA op event on the device planes (or the CPU's XLA threads) of a
  trace."""
  data = ProfileData.from_file(path)
  planes = [p for p in data.planes if p.name.startswith('/device:')]
  on_host = not planes  # the CPU backend: XLA ops are events tagged with `hlo_op` among the host's thread events
  planes = planes or [p for p in data.planes if p.name == '/host:CPU']
  for plane in planes:
    for line in plane.lines:
      if any(line.name.startswith(skip) for skip in SKIPPED_LINES):
        continue
      for event in line.events:
        if event.duration_ns <= 0 or 'ThreadpoolListener' in event.name:
          continue
        stats = dict(event.stats)
        if on_host and 'hlo_op' not in stats:
          continue
        where = str(stats.get('tf_op') or stats.get('long_name') or '')[:160]  # the JAX op path, where recorded
        yield event.name, str(stats.get('hlo_category', 'unknown')), where, event.duration_ns * 1e-9


def summarise(events, steps: int, top: int) -> list[dict]:
  by_category, by_kind, by_name = collections.Counter(), collections.Counter(), collections.Counter()
  wheres = {}
  for name, category, where, seconds in events:
    wheres[name] = where
    by_category[category] += seconds
    by_kind[re.sub(r'[.\d]+$', '', name)] += seconds  # fusion.12 and fusion.40 are both 'fusion'
    by_name[(name, category)] += seconds
  total = sum(by_category.values()) or 1.0
  rows = [{'category': c, 'ms_per_step': 1e3 * s / steps, 'share': s / total} for c, s in by_category.most_common()]
  rows += [{'kind': k, 'ms_per_step': 1e3 * s / steps, 'share': s / total} for k, s in by_kind.most_common(top)]
  rows += [{'op': n, 'category': c, 'ms_per_step': 1e3 * s / steps, 'share': s / total, 'source': wheres[n]}
           for (n, c), s in by_name.most_common(top)]
  return [{'device_ms_per_step': 1e3 * total / steps}] + rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='vit_s16')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--resolution', type=int, default=224)
  parser.add_argument('--dtype', choices=['float32', 'bfloat16'], default='float32')
  parser.add_argument('--remat', nargs='?', const=True, default=False, metavar='POLICY',
                      help='recompute each block in the backward pass (optionally a jax.checkpoint_policies name)')
  parser.add_argument('--attn-impl', default=None)
  parser.add_argument('--mlp', default=None, help="the channel mixer, e.g. 'mlp_tanh' (big_vision's tanh GELU)")
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--top', type=int, default=25)
  parser.add_argument('--trace-dir', default=None)
  args = parser.parse_args(argv)
  info, run = train_step.ours(args)
  for _ in range(2):  # compile and warm up outside the trace
    run()
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix='profile_step_')
  with jax.profiler.trace(trace_dir):
    for _ in range(args.steps):
      run()
  paths = glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True)
  if not paths:
    print(f'no trace written under {trace_dir}', file=sys.stderr)
    return 1
  print(json.dumps({**info, 'trace_dir': trace_dir}), flush=True)
  for row in summarise(op_events(max(paths)), args.steps, args.top):
    print(json.dumps(row), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
