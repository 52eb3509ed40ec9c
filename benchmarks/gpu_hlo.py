"""Where a compiled train step's memory traffic goes, read from XLA's optimised HLO, for a GPU on a machine without one.

`python -m benchmarks.gpu_hlo --model vit_b16 --batch 256 --dtype bfloat16 --mlp mlp_tanh --attn-impl cudnn` compiles
our train step for an H100 SXM (`--target h200`: an H200) through JAX's deviceless ahead-of-time path
(`jax.experimental.topologies` with a GPU target description; it needs JAX's CUDA plugin, not a GPU) and sums the bytes
each top-level op of the compiled step reads and writes. XLA's own fusions and copies are memory-bound, so their bytes
over the memory bandwidth bound their time from below: the H100 profiles put these passes at about 28 ms of ViT-B/16's
step where this count gives 21 ms (the largest fusions ran at 2.9-3.0 of the 3.35 TB/s, small ones slower). A change
meant to save elementwise passes can so be measured before a GPU is at hand; the compiled temporaries matched the
device's to 0.1% (21.32 against 21.33 GB). `--target cpu` reads the step compiled for this machine's CPU instead;
`--xla NAME=VALUE` weighs a compiler option. Prints JSON lines: one per kind of op (`products`: cuBLAS and generated
products, cuDNN convolutions; `kernels`: Pallas and cuDNN attention; `fusions`; `copies`), `--top N` of the largest ops,
and a summary with the fusions' and copies' time at the bandwidth and the cuBLAS epilogues XLA fused (`BIAS`,
`BIAS_GELU_AUX`, ...).

Without a device XLA does not autotune, so the products are cuBLAS's (`xla_gpu_enable_triton_gemm=False`, what the
H100 profiles found autotuning picked) and their kernels' speed is not measured: FLOPs and products are the business
of `benchmarks.train_step` on a GPU.
"""
import argparse
import collections
import json
import re
import sys
from unittest import mock

import jax
import jax.numpy as jnp
from jax.experimental import topologies

from benchmarks import train_step
from vision_models import parallel
from vision_models.errors import ConfigError
from vision_models.training import state as state_lib

# GpuTargetConfigProto text of the GPUs the device machines lend (NVIDIA's data sheets: the H200 is an H100 with
# 141 GB at 4.8 TB/s; CUDA 13 as JAX's cuda13 wheels).
_HOPPER = """gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 shared_memory_per_block_optin: 232448 threads_per_core_limit: 2048
  core_count: 132 fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: {bandwidth} l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: {memory} registers_per_core_limit: 65536 registers_per_block_limit: 65536
  cuda_compute_capability {{ major: 9 minor: 0 }}
}}
runtime_version {{ major: 13 minor: 0 }}
dnn_version_info {{ major: 9 minor: 10 }}
platform_name: "CUDA"
device_description_str: "{name}"
"""
TARGETS = {
    'h100': {'bandwidth': 3.35e12,
             'config': _HOPPER.format(bandwidth=3352320000000, memory=84929347584, name='NVIDIA H100 80GB HBM3')},
    'h200': {'bandwidth': 4.8e12,
             'config': _HOPPER.format(bandwidth=4800000000000, memory=150754820096, name='NVIDIA H200')},
}
_ARRAY = re.compile(r'\b(pred|bf16|[fsu]\d+)\[([\d,]*)\]')  # the element type's bits are in its name (f32, s8)
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%(\S+) = (.*?) ([a-z][a-z\-]*)\((.*?)\)(, .*)?$')
_FREE = {'parameter', 'get-tuple-element', 'bitcast', 'tuple', 'constant', 'after-all', 'opt-barrier'}


def array_bytes(shape: str) -> int:
  """Bytes of every array in an HLO shape (`bf16[256,197,768]{2,1,0}`, or a tuple of them)."""
  total = 0
  for element, dims in _ARRAY.findall(shape):
    count = 1
    for dim in filter(None, dims.split(',')):
      count *= int(dim)
    bits = 8 if element == 'pred' else 16 if element == 'bf16' else int(element[1:])
    total += count * max(1, bits // 8)
  return total


def _computations_with_products(hlo: str) -> set[str]:
  """Names of the HLO computations holding a dot or a convolution."""
  found, current = set(), None
  for line in hlo.split('\n'):
    header = re.match(r'^(?:ENTRY )?%(\S+) \(', line)
    if header:
      current = header.group(1)
    elif current and re.search(r' (dot|convolution)\(', line):
      found.add(current)
  return found


def kind_of(opcode: str, attributes: str, with_products: set[str]) -> str:
  """products (library or generated matrix products and convolutions), kernels (other library or hand-written
  kernels: cuDNN or Pallas attention), copies, or fusions (XLA's own memory-bound code)."""
  target = re.search(r'custom_call_target="([^"]+)"', attributes)
  if opcode == 'custom-call' and target:
    name = target.group(1)
    return 'products' if ('cublas' in name or 'conv' in name) else 'kernels'
  calls = re.search(r'calls=%([\w.\-]+)', attributes)
  if opcode in ('dot', 'convolution') or (calls and calls.group(1) in with_products):
    return 'products'
  return 'copies' if opcode in ('copy', 'transpose', 'copy-start', 'copy-done') else 'fusions'


def traffic(hlo: str) -> list[dict]:
  """Each top-level op of the entry computation of an optimised HLO module: name, kind, bytes read and written,
  cuBLAS epilogue. Free ops (parameters, bitcasts, tuples) are left out."""
  with_products = _computations_with_products(hlo)
  entry = hlo[hlo.index('\nENTRY'):]
  entry = entry[:entry.index('\n}')]
  sizes, ops = {}, []
  for line in entry.split('\n')[1:]:
    match = _INSTRUCTION.match(re.sub(r', metadata=\{.*?\}(?=, |$)', '', line))
    if not match:
      continue
    name, shape, opcode, operands, attributes = match.groups()
    sizes[name] = array_bytes(shape)
    if opcode in _FREE:
      continue
    attributes = attributes or ''
    read = sum(sizes.get(operand, 0) for operand in re.findall(r'%([\w.\-]+)', operands))
    epilogue = re.search(r'"epilogue":"(\w+)"', attributes)
    ops.append({'name': name, 'kind': kind_of(opcode, attributes, with_products), 'read': read,
                'written': sizes[name], 'epilogue': epilogue.group(1) if epilogue else None})
  return ops


def summary(ops: list[dict], bandwidth: float) -> tuple[list[dict], dict]:
  """Bytes per kind of op, and the fusions' and copies' bytes with their time at `bandwidth` bytes per second."""
  kinds = collections.defaultdict(lambda: {'ops': 0, 'bytes': 0})
  for op in ops:
    kinds[op['kind']]['ops'] += 1
    kinds[op['kind']]['bytes'] += op['read'] + op['written']
  rows = [{'kind': kind, **row, 'ms_at_bandwidth': row['bytes'] / bandwidth * 1e3}
          for kind, row in sorted(kinds.items(), key=lambda item: -item[1]['bytes'])]
  memory_bound = sum(row['bytes'] for row in rows if row['kind'] in ('fusions', 'copies'))
  epilogues = collections.Counter(op['epilogue'] for op in ops if op['epilogue'])
  return rows, {'memory_bound_bytes': memory_bound, 'memory_bound_ms': memory_bound / bandwidth * 1e3,
                'total_bytes': sum(row['bytes'] for row in rows), 'epilogues': dict(sorted(epilogues.items()))}


def gpu_devices(target: str) -> list:
  """Compile-only devices of one GPU described by `TARGETS[target]`."""
  try:
    return topologies.get_topology_desc('vision_models', 'cuda', target_config=TARGETS[target]['config'],
                                        topology='1x1x1').devices
  except (NotImplementedError, RuntimeError) as error:
    version = jax.__version__
    raise ConfigError(f'compiling for a GPU without one needs JAX\'s CUDA plugin ({error}); install it beside jax '
                      f'{version}: pip install "jax-cuda13-plugin=={version}" "jax-cuda13-pjrt=={version}" (set '
                      'JAX_PLATFORMS=cpu on a machine without a GPU), or use --target cpu') from error


def xla_option(text: str) -> tuple[str, object]:
  """`name=value` -> (name, value) with true / false / numbers as such."""
  name, sep, value = text.partition('=')
  if not sep or not name.startswith('xla_'):
    raise argparse.ArgumentTypeError(f'{text!r} is not an XLA option NAME=VALUE (e.g. xla_gpu_enable_cublaslt=true)')
  if value.lower() in ('true', 'false'):
    return name, value.lower() == 'true'
  try:
    return name, int(value)
  except ValueError:
    return name, value


def compile_step(args, devices: list) -> tuple[str, object]:
  """Our train step compiled for `args.target` on `devices`: the optimised HLO text and the compiled executable."""
  backend = 'cpu' if args.target == 'cpu' else 'gpu'
  # The models pick their kernels by jax.default_backend(), which is this machine's: make it the target's.
  with mock.patch.object(jax, 'default_backend', lambda: backend):
    model = train_step.create_model(args)
    mesh = parallel.make_mesh(dict(data=-1), devices=devices)
    shape = (args.resolution, args.resolution, 3)
    shardings = state_lib.shardings(model, train_step.OPTIMIZER, shape, mesh)
    state = state_lib.abstract(model, train_step.OPTIMIZER, shape, shardings)
    step = train_step.make_step(model, mesh, shardings)
    batch_sharding = parallel.batch_sharding(mesh)
    batch = {'image': jax.ShapeDtypeStruct((args.batch, *shape), jnp.float32, sharding=batch_sharding),
             'label': jax.ShapeDtypeStruct((args.batch,), jnp.int32, sharding=batch_sharding)}
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=parallel.replicated(mesh))
    options = ({} if backend == 'cpu' else {'xla_gpu_enable_triton_gemm': False}) | dict(args.xla or [])
    compiled = step.lower(state, batch, key).compile(compiler_options=options)
  return compiled.as_text(), compiled


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  train_step.add_model_arguments(parser, model='vit_b16', batch=256, dtype='bfloat16')
  parser.add_argument('--target', choices=['cpu', *TARGETS], default='h100')
  parser.add_argument('--bandwidth', type=float, default=None,
                      help='memory bandwidth in bytes per second (default: the target GPU\'s; needed for cpu)')
  parser.add_argument('--top', type=int, default=0, help='also print the N ops moving the most bytes')
  parser.add_argument('--hlo-out', default=None, help='write the optimised HLO text to this file')
  parser.add_argument('--xla', action='append', type=xla_option, metavar='NAME=VALUE',
                      help='an XLA compiler option for this compile (repeatable), e.g. xla_gpu_enable_cublaslt=true')
  args = parser.parse_args(argv)
  bandwidth = args.bandwidth or TARGETS.get(args.target, {}).get('bandwidth')
  if bandwidth is None:
    parser.error(f'--target {args.target} has no known memory bandwidth: give --bandwidth')
  devices = jax.devices() if args.target == 'cpu' else gpu_devices(args.target)
  if args.batch % len(devices):  # the step splits the batch over every device
    parser.error(f'--batch {args.batch} is not divisible by the {len(devices)} devices')
  hlo, compiled = compile_step(args, devices)
  if args.hlo_out:
    with open(args.hlo_out, 'w') as f:
      f.write(hlo)
  ops = traffic(hlo)
  rows, totals = summary(ops, bandwidth)
  for row in rows:
    print(json.dumps(row), flush=True)
  for op in sorted(ops, key=lambda op: -(op['read'] + op['written']))[:args.top]:
    print(json.dumps(op), flush=True)
  memory = compiled.memory_analysis()
  print(json.dumps({'model': args.model, 'batch': args.batch, 'dtype': args.dtype, 'attn_impl': args.attn_impl,
                    'mlp': args.mlp, 'remat': args.remat, 'target': args.target, 'bandwidth': bandwidth, **totals,
                    'temp_bytes': memory.temp_size_in_bytes if memory else None}), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
