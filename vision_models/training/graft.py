"""Grafting: start an edited architecture (another token mixer in some blocks, an extra norm, a wider MLP) from a
trained checkpoint of the original, as in "Exploring diffusion transformer designs via grafting" (Chandrasegaran et
al. 2025): every variable whose path and shape match is copied, the rest is initialised, randomly or by fitting the
new parameters alone to reproduce the old model's block outputs (`distill` steps of Adam on one batch).

`graft(old_variables, new_module, sample_inputs, rng)` returns the new variables and a `GraftReport` (loaded /
replaced / created paths with counts; `print(report)` shows it). `load_variables` reads a workdir's checkpoint, and
`from_config` does both for `config.init_from` (see `training.trainer`).
"""
import dataclasses
import os
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from vision_models.errors import ConfigError
from vision_models.models import resize
from vision_models.training.state import jit_init

BLOCK = re.compile(r'blocks_\d+')


@dataclasses.dataclass
class GraftReport:
  """Paths are 'collection/module/.../name'. `loaded`: copied from the old variables; `replaced`: old variables the
  new model lacks or has in another shape; `created`: new variables initialised here. `sizes` holds element counts
  (the new shape for loaded / created, the old one for replaced); `distill_mse` the block-output MSE (before, after)."""
  loaded: list[str]
  replaced: list[str]
  created: list[str]
  sizes: dict[str, int]
  distill_mse: tuple[float, float] | None = None
  resized: list[str] = dataclasses.field(default_factory=list)  # Loaded after resampling to another resolution.

  def counts(self) -> dict[str, tuple[int, int]]:
    """(tensors, elements) of each group."""
    return {name: (len(paths), sum(self.sizes[('old:' if name == 'replaced' else '') + p] for p in paths))
            for name, paths in (('loaded', self.loaded), ('replaced', self.replaced), ('created', self.created))}

  def __str__(self) -> str:
    lines = ['graft:']
    for name, (tensors, elements) in self.counts().items():
      lines.append(f'  {name:8s} {tensors:5d} tensors {elements:12,d} values')
    for name, paths in (('replaced', self.replaced), ('created', self.created)):
      for path in _summarise(paths):
        lines.append(f'    {name}: {path}')
    lines += [f'    resized: {path}' for path in self.resized]
    if self.distill_mse is not None:
      lines.append(f'  distillation: block-output MSE {self.distill_mse[0]:.4g} -> {self.distill_mse[1]:.4g}')
    return '\n'.join(lines)


def _summarise(paths: Sequence[str]) -> list[str]:
  """Paths with the block index replaced by the list of blocks, so 28 identical edits print as one line."""
  groups: dict[str, list[str]] = {}
  for p in paths:
    m = BLOCK.search(p)
    key = BLOCK.sub('blocks_*', p, count=1) if m else p
    groups.setdefault(key, []).append(m[0][7:] if m else '')
  return [k.replace('blocks_*', f'blocks_{{{",".join(v)}}}') if len(v) > 1 else
          (k.replace('blocks_*', f'blocks_{v[0]}') if v[0] else k) for k, v in groups.items()]


def _flat(variables: Any) -> dict[str, Any]:
  return traverse_util.flatten_dict(nn.unbox(dict(variables)), sep='/')


def _init(module: nn.Module, sample_inputs: tuple, rng: jax.Array, apply_kwargs: dict) -> dict[str, Any]:
  rngs = {'params': rng, 'dropout': rng}
  return nn.unbox(jit_init(lambda r: module.init(r, *sample_inputs, **apply_kwargs))(rngs))


def block_outputs(module: nn.Module, variables: Any, sample_inputs: tuple, apply_kwargs: dict) -> dict[str, Any]:
  """The output of every `blocks_i` submodule (flax `capture_intermediates`), by block name. A block returning
  `(x, pending)` (ViT's, whose residual add the next norm makes) outputs their sum."""
  def capture(mdl, method_name):
    return method_name == '__call__' and BLOCK.fullmatch(mdl.name or '') is not None
  _, state = module.apply(variables, *sample_inputs, **apply_kwargs, capture_intermediates=capture,
                          mutable=['intermediates'])
  inter = state['intermediates']
  outputs = {name: inter[name]['__call__'][0] for name in inter if BLOCK.fullmatch(name)}
  return {name: sum(out) if isinstance(out, tuple) else out for name, out in outputs.items()}


def graft(old_variables: Any, new_module: nn.Module, sample_inputs: tuple, rng: jax.Array, *,
          distill: int | None = None, old_module: nn.Module | None = None, learning_rate: float = 1e-3,
          apply_kwargs: dict | None = None) -> tuple[dict[str, Any], GraftReport]:
  """Variables of `new_module` holding every variable of `old_variables` whose path and shape match; the others come
  from `new_module.init(rng, *sample_inputs)`. With `distill` (steps), the created parameters alone are then fitted by
  Adam (`learning_rate`) to make every common `blocks_i` output match `old_module`'s on `sample_inputs`.
  `apply_kwargs` (default `train=False`) go to every init / apply call."""
  apply_kwargs = {'train': False} if apply_kwargs is None else apply_kwargs
  old, fresh = _flat(old_variables), _flat(_init(new_module, sample_inputs, rng, apply_kwargs))
  resized = []
  for p, v in fresh.items():  # Another resolution: grid position embeddings / relative position tables resampled.
    resizer = resize.RESIZERS.get(p.rsplit('/', 1)[-1])
    if p.startswith('params/') and p in old and np.shape(old[p]) != np.shape(v) and resizer is not None:
      try:
        old[p] = resizer(jnp.asarray(old[p]), np.shape(v))
        resized.append(p)
      except ConfigError:  # Not a grid it can resample: the variable is replaced.
        pass
  loaded = [p for p, v in fresh.items() if p in old and np.shape(old[p]) == np.shape(v)]
  loaded_set = set(loaded)
  report = GraftReport(
      loaded=loaded, replaced=[p for p in old if p not in loaded_set],
      created=[p for p in fresh if p not in loaded_set],
      sizes={**{p: int(np.size(v)) for p, v in fresh.items()}, **{f'old:{p}': int(np.size(v)) for p, v in old.items()}},
      resized=resized)
  merged = {p: jnp.asarray(old[p], v.dtype) if p in loaded_set else v for p, v in fresh.items()}
  variables = traverse_util.unflatten_dict(merged, sep='/')
  if distill:
    if old_module is None:
      raise ConfigError('distillation needs the old model: pass old_module (config.init_from.config names its config)')
    variables, report.distill_mse = _distill(variables, set(report.created), old_module, old_variables, new_module,
                                             sample_inputs, distill, learning_rate, apply_kwargs)
  return variables, report


def _distill(variables, created, old_module, old_variables, new_module, sample_inputs, steps, learning_rate,
             apply_kwargs):
  targets = jax.jit(lambda v: block_outputs(old_module, v, sample_inputs, apply_kwargs))(nn.unbox(dict(old_variables)))
  params, rest = variables['params'], {k: v for k, v in variables.items() if k != 'params'}
  labels = traverse_util.unflatten_dict({k: 'fit' if 'params/' + '/'.join(k) in created else 'keep'
                                         for k in traverse_util.flatten_dict(params)})
  tx = optax.multi_transform({'fit': optax.adam(learning_rate), 'keep': optax.set_to_zero()}, labels)

  def loss_fn(p):
    outputs = block_outputs(new_module, {'params': p, **rest}, sample_inputs, apply_kwargs)
    common = [n for n in outputs if n in targets]
    if not common:
      raise ConfigError('distillation: the old and new models share no blocks_i to match')
    return sum(jnp.mean((outputs[n] - targets[n]) ** 2) for n in common) / len(common)

  @jax.jit
  def step(p, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  opt_state, first = tx.init(params), None
  for _ in range(steps):
    params, opt_state, loss = step(params, opt_state)
    first = float(loss) if first is None else first
  return {'params': params, **rest}, (first, float(jax.jit(loss_fn)(params)))


def load_variables(init_from: Any) -> dict[str, Any]:
  """The variables of `init_from.workdir`'s latest checkpoint (or `init_from.checkpoint`, a `.../checkpoints/STEP`
  directory): the EMA weights when the state keeps them (`use_ema`, default True), plus the fixed variables."""
  import orbax.checkpoint as ocp
  from vision_models.training.checkpoint import Checkpointer
  if init_from.get('checkpoint'):
    path = os.path.abspath(init_from['checkpoint'])
    directory, step = os.path.dirname(path), os.path.basename(path)
    if not step.isdigit():
      raise ConfigError(f'config.init_from.checkpoint={path!r} must be a checkpoints/STEP directory')
    step = int(step)
  elif init_from.get('workdir'):
    directory, step = os.path.join(init_from['workdir'], 'checkpoints'), None
  else:
    raise ConfigError("config.init_from needs 'workdir' (a trained run) or 'checkpoint' (its checkpoints/STEP)")
  ckpt = Checkpointer(directory)
  step = ckpt.latest_step() if step is None else step
  if step is None or step not in ckpt.all_steps():
    raise ConfigError(f'config.init_from: no checkpoint {"" if step is None else step} in {directory}; train that '
                      'run first')
  state = ckpt.manager.restore(step, args=ocp.args.StandardRestore())
  ckpt.close()
  params = state['ema_params'] if init_from.get('use_ema', True) and 'ema_params' in state else state['params']
  return {'params': params, **(state.get('model_state') or {})}
