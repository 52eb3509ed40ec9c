"""Everything a run needs, built from the config and checked before anything compiles.

Each bad input raises `ConfigError` naming the config field and the fix: unknown model or dataset, a mesh larger than
the device count, a batch that does not split over the data-parallel devices, an image size the model cannot take,
a workdir that is not writable.
"""
import dataclasses
import importlib.util
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from vision_models import data, kernels, models, parallel
from vision_models.errors import ConfigError
from vision_models.training import device_preprocess, optim, state as state_lib


POSITIVE_INTS = ('batch_size', 'total_steps', 'log_every', 'eval_every', 'checkpoint_every')


@dataclasses.dataclass
class Setup:
  config: Any
  model: nn.Module
  mesh: Mesh
  dataset: data.DatasetInfo
  input_shape: tuple[int, int, int]
  tx: optax.GradientTransformation
  lr_schedule: optax.Schedule
  state_shardings: state_lib.TrainState
  rules: tuple

  @property
  def per_host_batch(self) -> int:
    return self.config.batch_size // jax.process_count()


def check_writable(directory: str, flag: str = 'workdir') -> None:
  """Creates `directory` and writes a probe file in it; a ConfigError naming `--flag` when it cannot."""
  try:
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, '.write_test')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f'{flag} {directory!r} is not writable ({e.strerror}); pass --{flag}=A_WRITABLE_DIR') from None


def load_config(path: Any, field: str) -> Any:
  """`get_config()` of the config file at `path` (named by `config.<field>`); a config itself passes through."""
  if not isinstance(path, str):
    return path
  if not os.path.exists(path):
    raise ConfigError(f'config file {path!r} not found (config.{field})')
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def model_kwargs(config: Any) -> dict[str, Any]:
  """config.model without its name: the keyword arguments of `models.create` (`dtype` strings become dtypes)."""
  kwargs = {k: v for k, v in config.model.items() if k != 'name'}
  if isinstance(kwargs.get('dtype'), str):
    try:
      kwargs['dtype'] = jnp.dtype(kwargs['dtype'])
    except TypeError:
      raise ConfigError(f'config.model.dtype={kwargs["dtype"]!r} is not a dtype; use float32 or bfloat16') from None
  return kwargs


def build(config: Any, workdir: str | None = None) -> Setup:
  """Validates the config against the data, the devices and the model, and builds what training needs."""
  for field in POSITIVE_INTS:
    value = config.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ConfigError(f'config.{field}={value!r} must be a positive integer')
  if workdir is not None:
    check_writable(workdir)
  dataset = data.info(config.data.name, config.data.get('data_dir'))
  for field in ('train_split', 'eval_split'):
    if config.data.get(field):
      data.split_size(config.data.name, config.data[field], config.data.get('data_dir'), f'config.data.{field}')
  for field in ('pp_train', 'pp_eval'):
    data.preprocess.parse(config.data[field])
  if config.data.get('on_corrupt', 'skip') not in data.ON_CORRUPT:
    raise ConfigError(f'config.data.on_corrupt={config.data.on_corrupt!r}; choose one of {", ".join(data.ON_CORRUPT)}')
  mesh = parallel.make_mesh(config.mesh)
  dp = parallel.data_parallel_size(mesh)
  if config.batch_size % dp or config.batch_size % jax.process_count():
    raise ConfigError(f'config.batch_size={config.batch_size} is not divisible by the data-parallel size {dp} '
                      f'(mesh data×fsdp) and process count {jax.process_count()}; use a multiple of {dp}')
  accum = config.get('grad_accum_steps', 1)
  if accum < 1 or config.batch_size % (accum * dp):
    raise ConfigError(f'config.grad_accum_steps={accum}: each micro-batch (batch_size / grad_accum_steps) must split '
                      f'over the {dp} data-parallel devices; use a batch_size that is a multiple of {accum * dp}')
  kernels.resolve_impl(config.model.get('attn_impl', 'xla'))
  model = models.create(config.model.name, num_classes=dataset.num_classes, **model_kwargs(config))
  size = config.data.image_size
  patch = getattr(model, 'patch_size', 1)
  if not isinstance(patch, int) or patch < 1 or size < 1:
    raise ConfigError(f'config.data.image_size={size} and the patch size {patch} must be positive integers')
  if size % patch:
    raise ConfigError(f'config.data.image_size={size} is not divisible by the patch size {patch} of '
                      f'{config.model.name}; use a multiple of {patch}')
  input_shape = (size, size, config.data.get('channels', 3))
  if config.data.get('pp_device'):
    device_preprocess.check(config.data.pp_device, input_shape, data.preprocess.image_dtype(config.data.pp_train))
  tx, lr_schedule = optim.make(config.optimizer, config.total_steps)
  rules = tuple(config.get('sharding_rules', parallel.DEFAULT_RULES))
  parallel.check_rules(rules, mesh)
  try:  # Traces the model abstractly: shape errors surface here, before any compilation.
    shardings = state_lib.shardings(model, tx, input_shape, mesh, rules, config.get('shard_min_size', 2 ** 14))
  except ConfigError:
    raise
  except Exception as e:  # Whatever the model's own checks raise while tracing abstractly, e.g. a zero width.
    raise ConfigError(f'config.model ({config.model.name!r}) cannot take input {input_shape}: '
                      f'{type(e).__name__}: {e}') from None
  return Setup(config, model, mesh, dataset, input_shape, tx, lr_schedule, shardings, rules)
