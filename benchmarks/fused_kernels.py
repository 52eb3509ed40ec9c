"""The GPU kernels that replace XLA passes in a ViT step, each timed against the XLA ops it replaces.

  python -m benchmarks.fused_kernels [--rows 50688] [--width 768] [--hidden 3072] [--repeats 30] [--max-ratio 1.0]

At ViT-B/16's widths (rows = batch 256 x 198 tokens), forward + backward where there is one:
  add_layer_norm  `x + r` and its LayerNorm: `kernels.add_layer_norm` against the add and Flax's `nn.LayerNorm` in
                  bfloat16 under autodiff (what a ViT with `norm_impl='xla'` runs)
  dgelu_matmul    `(dy · w2ᵀ) · gelu'(pre)` and its column sums: `kernels.dgelu_matmul` against XLA's (cuBLAS's
                  bfloat16 product, then a fusion, as autodiff of `mlp_tanh` runs it), and against cuBLAS's product
                  alone, the rate the kernel's GEMM should reach
Prints a JSON line per (op, impl) with the median seconds and the bytes each reads and writes at least, then one
line per op with the kernel's time over XLA's; exits with status 1 if a ratio exceeds `--max-ratio` (the kernels are
there to be faster). On the CPU the kernels run in interpret mode at small sizes and only their values are checked
against XLA's (the lines carry no timing and no bar).
"""
import argparse
import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.attention import time_it
from vision_models import kernels


def xla_add_layer_norm(x, r, scale, bias):
  s = x + r
  return s, nn.LayerNorm(1e-6, dtype=x.dtype).apply({'params': {'scale': scale, 'bias': bias}}, s)


def xla_dgelu(dy, w, pre):
  d_pre = (jnp.dot(dy, w.T).astype(jnp.float32) * kernels.gelu_tanh_slope(pre)).astype(pre.dtype)
  return d_pre, d_pre.astype(jnp.float32).sum(0)


def cases(rows: int, width: int, hidden: int, interpret: bool) -> dict:
  """op → ({impl: function of the inputs}, input shapes, least bytes moved)."""
  item = 2  # bfloat16

  def norm_step(fn):
    def step(x, r, ds, dy, scale, bias):
      out, vjp = jax.vjp(fn, x, r, scale, bias)
      return out, vjp((ds, dy))
    return step

  norm = {'pallas': norm_step(lambda *a: kernels.add_layer_norm(*a, 1e-6, interpret)),
          'xla': norm_step(xla_add_layer_norm)}
  dgelu = {'pallas': lambda dy, w, pre: kernels.dgelu_matmul(dy, w, pre, interpret),
           'xla': xla_dgelu,
           'cublas_product_alone': lambda dy, w, pre: jnp.dot(dy, w.T)}
  vectors = [(width,), (width,)]
  return {
      # forward reads x, r, writes s, y; backward reads s, ds, dy, writes the gradient
      'add_layer_norm': (norm, [(rows, width)] * 4 + vectors, 8 * rows * width * item),
      # reads dy, pre, writes d_pre
      'dgelu_matmul': (dgelu, [(rows, width), (hidden, width), (rows, hidden)],
                       (rows * width + 2 * rows * hidden) * item),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rows', type=int, default=256 * 198)
  parser.add_argument('--width', type=int, default=768)
  parser.add_argument('--hidden', type=int, default=3072)
  parser.add_argument('--repeats', type=int, default=30)
  parser.add_argument('--max-ratio', type=float, default=1.0, help="the bar: the kernel's time over XLA's")
  args = parser.parse_args(argv)
  backend = jax.default_backend()
  timed = backend == 'gpu'
  rows, width, hidden = (args.rows, args.width, args.hidden) if timed else (256, 192, 256)
  device = jax.devices()[0].device_kind
  failed = False
  for op, (impls, shapes, least_bytes) in cases(rows, width, hidden, interpret=not timed).items():
    rng = np.random.default_rng(0)
    inputs = [jnp.asarray(rng.standard_normal(s, np.float32), jnp.float32 if len(s) == 1 else jnp.bfloat16)
              for s in shapes]
    seconds, outputs = {}, {}
    for impl, fn in impls.items():
      compiled = jax.jit(fn).lower(*inputs).compile()
      outputs[impl] = jax.tree.leaves(compiled(*inputs))
      row = {'benchmark': 'fused_kernels', 'op': op, 'impl': impl, 'rows': rows, 'width': width, 'hidden': hidden,
             'backend': backend, 'device': device, 'least_bytes': least_bytes}
      if timed:
        seconds[impl] = row['seconds'] = time_it(compiled, inputs, args.repeats)
        row['gb_per_s_at_least_bytes'] = least_bytes / row['seconds'] / 1e9
      print(json.dumps(row), flush=True)
    errors = [float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)) /
                    max(np.linalg.norm(np.asarray(b, np.float32)), 1e-30))
              for a, b in zip(outputs['pallas'], outputs['xla'])]
    summary = {'benchmark': 'fused_kernels_summary', 'op': op, 'device': device, 'max_relative_error': max(errors)}
    ok = max(errors) < 2e-2
    if timed:
      summary['pallas_over_xla'] = seconds['pallas'] / seconds['xla']
      ok = ok and summary['pallas_over_xla'] <= args.max_ratio
    summary['ok'] = ok
    failed = failed or not ok
    print(json.dumps(summary), flush=True)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
