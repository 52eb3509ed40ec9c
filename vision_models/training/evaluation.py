"""Evaluation beyond a workdir's own checkpoint at its own resolution: at another resolution (position embeddings and
relative position tables resampled, the eval preprocessing rescaled), and of an exported or converted model
(`--checkpoint`: a directory written by `vision_models.export` or `vision_models.convert.to_orbax`)."""
import json
import os
import re
from typing import Any

import jax

from vision_models.errors import ConfigError
from vision_models.models import resize
from vision_models.training import optim, setup as setup_lib, state as state_lib, trainer
from vision_models.training.checkpoint import Checkpointer

_SIZE_OPS = re.compile(r'(resize_small|resize|central_crop|resize_center_crop|inception_crop|random_resized_crop)'
                       r'\((\d+)')


def pp_at_resolution(pp: str, old: int, new: int) -> str:
  """The preprocessing string with every size argument scaled by new/old (resize 256 → crop 224 at 224 becomes
  resize 439 → crop 384 at 384; crop fractions stay)."""
  return _SIZE_OPS.sub(lambda m: f'{m[1]}({round(int(m[2]) * new / old)}', pp)


def at_resolution(config: Any, resolution: int) -> Any:
  """A copy of `config` evaluating at `resolution`: the data's image size, the eval preprocessing and the model's
  `image_size` when it has one (MaxViT's windows follow it)."""
  if not isinstance(resolution, int) or resolution < 1:
    raise ConfigError(f'--resolution={resolution!r} must be a positive integer')
  config = config.copy_and_resolve_references()
  old = config.data.image_size
  config.data.image_size = resolution
  config.data.pp_eval = pp_at_resolution(config.data.pp_eval, old, resolution)
  if 'image_size' in config.model:
    config.model.image_size = resolution
  return config


def check_classification(config: Any, flag: str) -> None:
  """`--resolution` and `--checkpoint` evaluate classifiers: a ConfigError for another task, before anything builds."""
  task = config.get('task', 'classification')
  if task != 'classification':
    raise ConfigError(f'{flag} evaluates a classifier, but config.task is {task!r}; drop {flag} (eval.py samples '
                      'a diffusion model at its training resolution)')


def _abstract_params(s: setup_lib.Setup) -> Any:
  return state_lib.abstract(s.model, s.tx, s.input_shape, s.state_shardings).params


def _fit(params: Any, s: setup_lib.Setup) -> tuple[Any, list[str]]:
  """`params` resized to `s.model` and placed with its shardings."""
  params, resized = resize.resize_params(params, _abstract_params(s))
  return jax.device_put(params, s.state_shardings.params), resized


def _write(workdir: str, results: dict[str, Any], name: str = 'eval.json') -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, name), 'w') as f:
      json.dump(results, f, indent=1)


def evaluate_workdir(config: Any, workdir: str, resolution: int | None = None) -> dict[str, Any]:
  """The workdir's latest good checkpoint (trained with `config`) evaluated at `resolution` (default: the training
  one), EMA weights too when kept; writes `DIR/eval.json` (`DIR/eval_R.json` at another resolution)."""
  if resolution is not None:
    check_classification(config, f'--resolution={resolution}')
  if resolution is None or resolution == config.data.image_size:
    return trainer.evaluate(config, workdir)
  train_setup = setup_lib.build(config, workdir)
  s = setup_lib.build(at_resolution(config, resolution), workdir)
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'))
  step, state = ckpt.restore_latest_good(state_lib.abstract(train_setup.model, train_setup.tx,
                                                            train_setup.input_shape, train_setup.state_shardings))
  ckpt.close()
  if step is None:
    raise ConfigError(f'no checkpoint in {ckpt.directory}; train first: python train.py --config=... '
                      f'--workdir={workdir}')
  params, resized = _fit(state.params, s)
  results = {'step': step, 'resolution': resolution, 'resized': resized,
             **trainer.run_eval(s, params, state.model_state)}
  ema = optim.ema_params(state.opt_state)
  if ema is not None:
    results.update({k.replace('eval/', 'eval_ema/'): v
                    for k, v in trainer.run_eval(s, _fit(ema, s)[0], state.model_state).items()})
  _write(workdir, results, f'eval_{resolution}.json')
  return results


def evaluate_checkpoint(config: Any, checkpoint: str, workdir: str, resolution: int | None = None) -> dict[str, Any]:
  """An exported / converted model evaluated on `config`'s eval data (at `resolution` when given); the model is the
  one the checkpoint names (`model.json`), the config supplies the data and preprocessing. Writes
  `DIR/eval_checkpoint.json`."""
  from vision_models.export import load_exported
  check_classification(config, '--checkpoint')
  if resolution is not None:
    config = at_resolution(config, resolution)
  module, variables, _ = load_exported(checkpoint)
  if 'image_size' in module.__dataclass_fields__ and module.image_size != config.data.image_size:
    module = module.clone(image_size=config.data.image_size)
  s = setup_lib.build(config, workdir)
  if getattr(module, 'num_classes', None) != s.dataset.num_classes:
    raise ConfigError(f'{checkpoint} classifies {getattr(module, "num_classes", "?")} classes but '
                      f'{config.data.name} has {s.dataset.num_classes}; evaluate it on its own dataset')
  s = setup_lib.Setup(config, module, s.mesh, s.dataset, s.input_shape, s.tx, s.lr_schedule,
                      state_lib.shardings(module, s.tx, s.input_shape, s.mesh, s.rules), s.rules)
  variables = dict(variables)
  params, resized = _fit(variables.pop('params'), s)
  model_state = jax.device_put(variables, s.state_shardings.model_state)
  results = {'checkpoint': os.path.abspath(checkpoint), 'resolution': config.data.image_size, 'resized': resized,
             **trainer.run_eval(s, params, model_state)}
  _write(workdir, results, 'eval_checkpoint.json')
  return results
