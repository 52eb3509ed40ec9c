"""Inference-ready export of a trained workdir, and loading it back.

  python -m vision_models.export --config=configs/X.py --workdir=DIR --out=OUT [--dtype=bfloat16]

restores DIR's latest good checkpoint and writes
  OUT/variables/   Orbax (StandardCheckpointer): `params` (the EMA weights when the run keeps them) and the model's
                   other collections (`batch_stats`, constants); no optimizer state; floats cast to `--dtype`,
  OUT/model.json   {"name", "kwargs"} that rebuild the module with `models.create(name, **kwargs)`, plus the step,
                   dtype, image size and whether the weights are the EMA,
  OUT/config.json  the training config (`ConfigDict.to_json_best_effort`).
`python -m vision_models.convert.to_orbax` writes the same layout from timm weights (without config.json).
`vision_models.load_exported(OUT)` gives `(module, variables, config)` back; this module imports no TensorFlow until
`export` runs, so loading stays light.
"""
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from vision_models.errors import ConfigError

DTYPES = ('float32', 'bfloat16')


def _cast(tree: Any, dtype: Any) -> Any:
  """Floating leaves to `dtype` (they keep their sharding); integer leaves untouched."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def ema_params(state: Any) -> Any | None:
  """The EMA of the weights when the train state keeps one: a `state.ema_params` field (the diffusion state) or an
  `ema_params` entry of the optimizer state (an EMA kept by the optimizer chain); None otherwise."""
  ema = getattr(state, 'ema_params', None)
  if ema is None and getattr(state, 'opt_state', None) is not None:
    import optax
    ema = optax.tree_utils.tree_get(state.opt_state, 'ema_params')
  return ema


def _jsonable(value: Any) -> Any:
  """Config values as JSON: tuples become lists, dtypes their names."""
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  return jnp.dtype(value).name


def _check_out(out: str) -> str:
  out = os.path.abspath(out)
  if os.path.exists(os.path.join(out, 'variables')):
    raise ConfigError(f'--out {out!r} already holds an exported model; remove it or choose a new directory')
  from vision_models.training.setup import check_writable  # Lazy: it imports the input pipeline (TensorFlow).
  check_writable(out, 'out')
  return out


def export(config: Any, workdir: str, out: str, dtype: str = 'float32') -> dict[str, Any]:
  """Writes OUT/variables, OUT/model.json and OUT/config.json from `workdir`'s latest good checkpoint (a classifier,
  or a DiT when `config.task == 'diffusion'`); returns what model.json holds."""
  if dtype not in DTYPES:
    raise ConfigError(f'--dtype={dtype!r}; choose one of {", ".join(DTYPES)}')
  checkpoints = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(checkpoints) or not os.listdir(checkpoints):
    raise ConfigError(f'no checkpoint in {checkpoints}; train first: python train.py --config=... --workdir={workdir}')
  out = _check_out(out)
  from vision_models.training.checkpoint import Checkpointer  # TensorFlow (data) comes in with the builders.
  if config.get('task', 'classification') == 'diffusion':
    from vision_models.diffusion import train_step as state_lib, trainer as builder
  else:
    from vision_models.training import setup as builder, state as state_lib
  s = builder.build(config)
  ckpt = Checkpointer(checkpoints, max_to_keep=config.get('keep_checkpoints', 3))
  try:
    step, state = ckpt.restore_latest_good(state_lib.abstract(s.model, s.tx, s.input_shape, s.state_shardings))
  finally:
    ckpt.close()
  if step is None:
    raise ConfigError(f'no readable checkpoint in {checkpoints}; train first: python train.py --config=... '
                      f'--workdir={workdir}')
  ema = ema_params(state)
  variables = _cast({'params': state.params if ema is None else ema, **state.model_state}, jnp.dtype(dtype))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(out, 'variables'), variables)
  checkpointer.wait_until_finished()
  from vision_models import models
  # The module's own values of the fields the config sets and of those the builder derives from the data.
  fields = ['num_classes', 'input_size', 'in_channels', *(k for k in config.model if k != 'name')]
  kwargs = {k: getattr(s.model, k) for k in fields if hasattr(s.model, k)}
  spec = {'name': config.model.name, 'kwargs': _jsonable(kwargs), 'image_size': config.data.image_size,
          'channels': config.data.get('channels', 3), 'dtype': dtype, 'step': int(step), 'ema': ema is not None,
          'workdir': os.path.abspath(workdir), 'param_count': models.param_count(variables['params'])}
  if jax.process_index() == 0:
    with open(os.path.join(out, 'model.json'), 'w') as f:
      json.dump(spec, f, indent=2)
    with open(os.path.join(out, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  return spec


def _tuples(value: Any) -> Any:
  """JSON lists back to tuples: module fields must be hashable."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def load_exported(path: str, **overrides: Any) -> tuple[nn.Module, dict[str, Any], Any]:
  """`(module, variables, config)` from a directory `export` (or `convert.to_orbax`) wrote, ready for
  `module.apply(variables, images, train=False)`. `overrides` replace model fields (e.g. `attn_impl='pallas'`).
  `config` is the training config as an `ml_collections.ConfigDict`, or None when the directory has none. The
  variables are restored onto the default device."""
  from vision_models import models
  path = os.path.abspath(path)
  spec_path = os.path.join(path, 'model.json')
  if not os.path.isfile(spec_path) or not os.path.isdir(os.path.join(path, 'variables')):
    raise ConfigError(f'{path!r} is not an exported model (it needs model.json and variables/); write one with '
                      'python -m vision_models.export --config=... --workdir=... --out=...')
  with open(spec_path) as f:
    spec = json.load(f)
  kwargs = {**_tuples(spec.get('kwargs', {})), **overrides}
  if isinstance(kwargs.get('dtype'), str):
    kwargs['dtype'] = jnp.dtype(kwargs['dtype'])
  module = models.create(spec['name'], **kwargs)
  checkpointer = ocp.StandardCheckpointer()
  directory = os.path.join(path, 'variables')
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(directory).item_metadata.tree)
  variables = checkpointer.restore(directory, target)
  config = None
  if os.path.isfile(os.path.join(path, 'config.json')):
    import ml_collections
    with open(os.path.join(path, 'config.json')) as f:
      config = ml_collections.ConfigDict(json.load(f))
  return module, variables, config


def main(argv: list[str]) -> None:
  del argv
  from absl import flags
  from vision_models import cli
  cli.init_distributed()
  f = flags.FLAGS
  spec = export(cli.config_or_exit(CONFIG), f.workdir, f.out, f.dtype)
  what = 'EMA parameters' if spec['ema'] else 'parameters'
  print(f'step {spec["step"]}: {spec["name"]}, {spec["param_count"]:,} {what} in {spec["dtype"]} → {f.out}\n'
        f'load it with vision_models.load_exported({f.out!r}); classify images with '
        f'python -m vision_models.predict --model {f.out} IMAGE...')


if __name__ == '__main__':
  from absl import app, flags
  from vision_models import cli
  CONFIG, _ = cli.define_common_flags()
  flags.DEFINE_string('out', None, 'Output directory (variables/, model.json, config.json).', required=True)
  flags.DEFINE_string('dtype', 'float32', f'Parameter dtype of the export: {" or ".join(DTYPES)}.')
  app.run(cli.clean_errors(main), flags_parser=cli.parse_flags)
