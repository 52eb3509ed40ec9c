"""Times our full jitted train step (forward, backward, AdamW update) and, with --against-timm, timm's in the same run.

  python -m benchmarks.train_step --model vit_s16 --batch 8 --resolution 224 --steps 10 --against-timm

Prints one JSON line per implementation (`examples_per_sec`, median `step_seconds`, `model_flops_per_step`, `mfu`
where the device's peak is known, the compiled step's temporary and peak memory) and, with --against-timm, a line
with the ratio ours / timm. `--min-ratio R` exits 1 when the ratio is below R, so the bar can be checked by a script.
`--mlp NAME` picks the channel mixer (`mlp_tanh`: big_vision's tanh GELU, 4% faster than the exact one on an H100).
`--remat [POLICY]` recomputes each block in the backward pass (all of it, or what a `jax.checkpoint_policies` name does
not save) and also reports the peak memory of the same step compiled without it (`peak_bytes_without_remat`).
`--pp-device SPEC` (e.g. 'randaugment(2, 15)|flip_lr|value_range(-1, 1)', as `config.data.pp_device`) also times the
step fed uint8 images that it augments itself, and prints what the augmentation adds to the step.
`--matmul-rate N` also times one [N, N] · [N, N] product in each library (XLA for ours, PyTorch for timm) among the
steps and reports each step's matrix-product FLOP rate as a fraction of it (`matmul_fraction`): on the CPU, where no
peak is known, how close a step runs to what the machine's products reach.
With --against-timm the two steps are timed alternately (ours, timm, ours, ...), so a change in the machine's load
during the run weighs on both sides of the ratio alike.
"""
from vision_models import host_memory

if __name__ == '__main__':
  host_memory.reuse_freed_memory()  # as train.py does, before numpy, JAX or torch start threads

import argparse  # noqa: E402
import json
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vision_models import kernels, models, parallel
from vision_models.errors import ConfigError
from vision_models.training import device_preprocess, perf, state as state_lib, steps

TIMM_NAMES = {
    'vit_ti16': 'vit_tiny_patch16_224', 'vit_s16': 'vit_small_patch16_224', 'vit_b16': 'vit_base_patch16_224',
    'vit_l16': 'vit_large_patch16_224', 'convnext_t': 'convnext_tiny', 'convnext_s': 'convnext_small',
    'convnext_b': 'convnext_base', 'convnextv2_t': 'convnextv2_tiny', 'mixer_s16': 'mixer_s16_224',
    'mixer_b16': 'mixer_b16_224', 'maxvit_t': 'maxvit_tiny_tf_224', 'maxvit_s': 'maxvit_small_tf_224',
}


def time_steps(run_steps: list, steps: int, warmup: int) -> list[list[float]]:
  """Seconds of each of `steps` calls of every function in `run_steps`, interleaved, after `warmup` calls each."""
  for _ in range(warmup):
    for run in run_steps:
      run()
  times = [[] for _ in run_steps]
  for _ in range(steps):
    for run, spent in zip(run_steps, times):
      start = time.perf_counter()
      run()
      spent.append(time.perf_counter() - start)
  return times


def add_model_arguments(parser: argparse.ArgumentParser, model: str, batch: int, dtype: str) -> None:
  """The flags that pick the model and its step: --model, --batch, --resolution, --dtype, --remat, --attn-impl, --mlp,
  --mlp-backward, --norm-impl (read back by `model_kwargs`), with these defaults."""
  parser.add_argument('--model', default=model)
  parser.add_argument('--batch', type=int, default=batch)
  parser.add_argument('--resolution', type=int, default=224)
  parser.add_argument('--dtype', choices=['float32', 'bfloat16'], default=dtype)
  parser.add_argument('--remat', nargs='?', const=True, default=False, metavar='POLICY',
                      help='recompute each block in the backward pass (optionally a jax.checkpoint_policies name)')
  parser.add_argument('--attn-impl', default=None)
  parser.add_argument('--mlp', default=None, help="the channel mixer, e.g. 'mlp_tanh' (big_vision's tanh GELU)")
  parser.add_argument('--mlp-backward', default=None,
                      help="mlp_tanh's backward product: 'xla' or 'pallas' (kernels.dgelu_matmul; default: the "
                      "model's)")
  parser.add_argument('--norm-impl', default=None, help="a ViT's LayerNorm: 'xla' or 'pallas' (default: the model's)")


def model_kwargs(args) -> dict:
  """The keyword arguments of `models.create` that the command line sets (dtype, remat, attention, MLP, norm)."""
  kwargs = {'dtype': jnp.bfloat16} if args.dtype == 'bfloat16' else {}
  if args.remat:
    kwargs['remat'] = args.remat
  if args.attn_impl:
    kwargs['attn_impl'] = args.attn_impl
  if args.mlp:
    kwargs['mlp'] = args.mlp
  if args.mlp_backward:
    kwargs['mixer_options'] = {args.mlp or 'mlp': {'backward': args.mlp_backward}}
  if args.norm_impl:
    kwargs['norm_impl'] = args.norm_impl
  return kwargs


OPTIMIZER = optax.adamw(1e-4, weight_decay=0.05)


def create_model(args, **overrides) -> nn.Module:
  """The command line's model with 1000 classes, `overrides` replacing keyword arguments of `model_kwargs`."""
  return models.create(args.model, num_classes=1000, **{**model_kwargs(args), **overrides})


def make_step(model: nn.Module, mesh, shardings, preprocess=None):
  """`model`'s jitted classification train step with `OPTIMIZER` at a constant learning rate."""
  return steps.make_train_step(steps.classification_loss(model, preprocess=preprocess), OPTIMIZER,
                               optax.constant_schedule(1e-4), mesh, shardings)


def ours(args, pp_device: str | None = None) -> tuple[dict, object]:
  """Our train step: its description (FLOPs, memory, parameters) and a function running one step. With
  `pp_device` the batch is uint8 and the step augments it first."""
  model = create_model(args)
  mesh = parallel.make_mesh(dict(data=-1))
  shape = (args.resolution, args.resolution, 3)
  shardings = state_lib.shardings(model, OPTIMIZER, shape, mesh)
  state = state_lib.create(model, OPTIMIZER, shape, jax.random.key(0), shardings)
  preprocess = device_preprocess.parse(pp_device) if pp_device else None
  step = make_step(model, mesh, shardings, preprocess)
  rng = np.random.default_rng(0)
  images = (rng.integers(0, 256, (args.batch, *shape), np.uint8) if pp_device
            else rng.normal(size=(args.batch, *shape)).astype(np.float32))
  batch = jax.device_put({'image': images,
                          'label': rng.integers(0, 1000, args.batch).astype(np.int32)}, parallel.batch_sharding(mesh))
  key = jax.random.key(1)
  counted = step
  if args.attn_impl not in (None, 'xla'):  # kernels are custom calls XLA cannot count: count the XLA twin
    counted = make_step(create_model(args, attn_impl='xla'), mesh, shardings, preprocess)
  flops = perf.step_flops(counted, state, batch, key)
  products = {}  # the step's products alone, for its share of the reference product's rate
  if args.matmul_rate:
    products['matmul_flops_per_step'] = perf.jaxpr_flops(counted.trace(state, batch, key).jaxpr)
  memory = compiled_memory(step, state, batch, key)
  if args.remat:  # What rematerialisation saves: the same step compiled without it.
    plain_step = make_step(create_model(args, remat=False), mesh, shardings, preprocess)
    memory.update({f'{name}_without_remat': value
                   for name, value in compiled_memory(plain_step, state, batch, key).items()})
  holder = [state]

  def run():
    holder[0], metrics = step(holder[0], batch, key)
    jax.block_until_ready(metrics)

  return {'impl': 'vision_models', 'model': args.model, 'batch': args.batch, 'resolution': args.resolution,
          'dtype': args.dtype, 'remat': args.remat, 'mlp': args.mlp, 'pp_device': pp_device,
          'device': jax.devices()[0].device_kind, 'devices': jax.device_count(), 'model_flops_per_step': flops,
          **products, **memory, 'params': models.param_count(nn.unbox(holder[0].params))}, run


def compiled_memory(step, *args) -> dict:
  """XLA's memory analysis of the compiled step: its temporaries and its peak (arguments, outputs not aliasing an
  argument, and temporaries), in bytes; None where the backend does not say."""
  memory = step.lower(*args).compile().memory_analysis()
  if memory is None:
    return {'temp_bytes': None, 'peak_bytes': None}
  return {'temp_bytes': memory.temp_size_in_bytes,
          'peak_bytes': (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
                         + memory.temp_size_in_bytes)}


def xla_product(size: int, dtype: str):
  """A function running one jitted [size, size] · [size, size] product in `dtype`, and its FLOPs."""
  x = jnp.ones((size, size), dtype)
  product = jax.jit(jnp.matmul)
  return lambda: jax.block_until_ready(product(x, x)), 2.0 * size ** 3


def torch_product(size: int, dtype: str):
  """The same product in PyTorch, on the device timm's step uses."""
  import torch
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  x = torch.ones(size, size, dtype=getattr(torch, dtype), device=device)

  def run():
    torch.matmul(x, x)
    if device == 'cuda':
      torch.cuda.synchronize()

  return run, 2.0 * size ** 3


def timm_step(args) -> tuple[dict, object]:
  """timm's train step (same architecture, AdamW, batch and resolution) and a function running one step."""
  import timm
  import torch
  model = timm.create_model(TIMM_NAMES[args.model], pretrained=False, num_classes=1000)
  model.train()
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  model.to(device)
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
  images = torch.randn(args.batch, 3, args.resolution, args.resolution, device=device)
  labels = torch.randint(0, 1000, (args.batch,), device=device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == 'bfloat16')

  def run():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    if device == 'cuda':
      torch.cuda.synchronize()

  return {'impl': 'timm', 'model': TIMM_NAMES[args.model], 'batch': args.batch, 'resolution': args.resolution,
          'dtype': args.dtype, 'device': device, 'torch_threads': torch.get_num_threads()}, run


def with_timing(info: dict, times: list[float], batch: int, product: tuple[list[float], float] | None = None,
                product_flops_per_step: float | None = None) -> dict:
  """`info` with the median step time and throughput, MFU where the device's peak is known and, given the times and
  FLOPs of the reference product run among the steps, the step's matrix-product FLOP rate as a fraction of it."""
  median = statistics.median(times)
  info = {**info, 'step_seconds': median, 'examples_per_sec': batch / median}
  if 'model_flops_per_step' in info:
    info['mfu'] = perf.mfu(info['model_flops_per_step'], median, perf.device_peak_flops(), jax.device_count())
  if product:
    product_times, flops = product
    rate = flops / statistics.median(product_times)
    info.update(matmul_flops_per_sec=rate, matmul_fraction=product_flops_per_step / median / rate)
  return info


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add_model_arguments(parser, model='vit_s16', batch=8, dtype='float32')  # --remat also reports the memory without
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--against-timm', action='store_true')
  parser.add_argument('--min-ratio', type=float, default=None, help='exit 1 when ours / timm is below this')
  parser.add_argument('--min-mfu', type=float, default=None,
                      help="exit 1 when our step's MFU is below this, or unknown (issue 9: 0.5 on an H100)")
  parser.add_argument('--pp-device', default=None, help='also time the step augmenting uint8 images with this spec')
  parser.add_argument('--matmul-rate', type=int, default=None, metavar='N',
                      help="also time an [N, N] product in each side's library and report the steps' product FLOP "
                           'rates as a fraction of it')
  args = parser.parse_args(argv)
  try:  # bad input is a usage error (exit 2), not a missed bar (exit 1)
    create_model(args)
    if args.attn_impl:
      kernels.resolve_impl(args.attn_impl)
  except ConfigError as e:
    parser.error(str(e))
  if args.against_timm and args.model not in TIMM_NAMES:
    parser.error(f'no timm counterpart for {args.model}; known: {", ".join(sorted(TIMM_NAMES))}')
  if args.batch % jax.device_count():  # our step splits the batch over every device
    parser.error(f'--batch {args.batch} is not divisible by the {jax.device_count()} devices; use a multiple of '
                 f'{jax.device_count()}')
  sides = [ours(args)] + ([ours(args, args.pp_device)] if args.pp_device else [])
  sides += [timm_step(args)] if args.against_timm else []
  products = {}  # one reference product per library, timed among the steps: XLA's for ours, PyTorch's for timm
  if args.matmul_rate:
    products['vision_models'] = xla_product(args.matmul_rate, args.dtype)
    if args.against_timm:
      products['timm'] = torch_product(args.matmul_rate, args.dtype)
  times = time_steps([run for _, run in sides] + [run for run, _ in products.values()], args.steps, args.warmup)
  product_times = dict(zip(products, times[len(sides):]))
  product_flops = sides[0][0].get('matmul_flops_per_step')  # timm's too: the same architecture
  product_of = lambda impl: (product_times[impl], products[impl][1]) if products else None
  result, *others = [with_timing(info, spent, args.batch, product_of(info['impl']), product_flops)
                     for (info, _), spent in zip(sides, times)]
  print(json.dumps(result), flush=True)
  if args.pp_device:
    augmented = others.pop(0)
    print(json.dumps(augmented), flush=True)
    added = augmented['step_seconds'] - result['step_seconds']
    print(json.dumps({'model': args.model, 'pp_device': args.pp_device, 'augment_seconds': added,
                      'augment_fraction_of_step': added / result['step_seconds']}), flush=True)
  failed = args.min_mfu is not None and not (result.get('mfu') or 0.0) >= args.min_mfu
  if failed:
    print(f"MFU {result.get('mfu')} is below --min-mfu {args.min_mfu}", file=sys.stderr)
  if not args.against_timm:
    return int(failed)
  reference = others[0]
  print(json.dumps(reference), flush=True)
  ratio = result['examples_per_sec'] / reference['examples_per_sec']
  print(json.dumps({'model': args.model, 'ours_over_timm': ratio}), flush=True)
  return 1 if failed or (args.min_ratio is not None and ratio < args.min_ratio) else 0


if __name__ == '__main__':
  sys.exit(main())
