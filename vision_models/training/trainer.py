"""The canonical trainer, read top to bottom: setup → state (fresh or restored) → loop of steps with logging,
evaluation and checkpoints → final evaluation. `evaluate` restores a workdir's latest checkpoint and evaluates it."""
import json
import os
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from vision_models import data, parallel
from vision_models.errors import ConfigError
from vision_models.training import setup as setup_lib, state as state_lib, steps
from vision_models.training.checkpoint import Checkpointer
from vision_models.training.metrics import MetricWriter


def _checkpointer(config: Any, workdir: str) -> Checkpointer:
  return Checkpointer(os.path.join(workdir, 'checkpoints'), max_to_keep=config.get('keep_checkpoints', 3))


def run_eval(s: setup_lib.Setup, params: Any, model_state: Any, eval_step=None) -> dict[str, Any]:
  """Top-1 / top-5 accuracy, loss and per-class accuracy over the whole eval split (padding masked out)."""
  cfg = s.config.data
  if eval_step is None:
    eval_step = steps.make_eval_step(s.model, s.mesh, s.state_shardings.params, s.state_shardings.model_state,
                                     s.rules)
  totals = None
  for batch in data.eval_batches(cfg.name, cfg.eval_split, cfg.get('data_dir'), cfg.pp_eval, s.per_host_batch):
    sums = jax.device_get(eval_step(params, model_state, parallel.to_global(batch, s.mesh)))
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
  count = max(float(totals['count']), 1.0)
  per_class = totals['class_hits'] / np.maximum(totals['class_count'], 1)
  return {'eval/accuracy': float(totals['top1']) / count, 'eval/top5_accuracy': float(totals['top5']) / count,
          'eval/loss': float(totals['loss']) / count, 'eval/examples': int(count),
          'eval/per_class_accuracy': [round(float(a), 6) for a in per_class]}


def _task_trainer(config: Any):
  """None for `config.task` 'classification' (the default, the loop below), else the module with the task's own
  `train` and `evaluate`."""
  task = config.get('task', 'classification')
  if task == 'diffusion':
    from vision_models.diffusion import trainer as diffusion_trainer
    return diffusion_trainer
  if task != 'classification':
    raise ConfigError(f"unknown config.task {task!r}; choose 'classification' or 'diffusion'")
  return None


def train(config: Any, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final evaluation."""
  if other := _task_trainer(config):
    return other.train(config, workdir)
  s = setup_lib.build(config, workdir)
  is_main = jax.process_index() == 0
  ckpt = _checkpointer(config, workdir)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  start = ckpt.latest_step()
  if start is None:
    state, start = state_lib.create(s.model, s.tx, s.input_shape, init_rng, s.state_shardings), 0
  else:
    state = ckpt.restore(state_lib.abstract(s.model, s.tx, s.input_shape, s.state_shardings))
    if is_main:
      print(f'Resuming from step {start} in {ckpt.directory}')
  train_step = steps.make_train_step(s.model, s.tx, s.lr_schedule, s.mesh, s.state_shardings,
                                     config.get('label_smoothing', 0.0), s.rules)
  eval_step = steps.make_eval_step(s.model, s.mesh, s.state_shardings.params, s.state_shardings.model_state, s.rules)
  writer = MetricWriter(workdir)
  cfg = config.data
  batches = data.train_batches(cfg.name, cfg.train_split, cfg.get('data_dir'), cfg.pp_train, s.per_host_batch,
                               seed=config.seed, start_step=start, shuffle_buffer=cfg.get('shuffle_buffer', 10_000))
  total = config.total_steps
  results: dict[str, Any] = {}
  bar = tqdm(total=total, initial=start, disable=not is_main, desc='train', dynamic_ncols=True)
  last_time, last_step = time.perf_counter(), start
  for step in range(start + 1, total + 1):
    state, metrics = train_step(state, parallel.to_global(next(batches), s.mesh), step_rng)
    bar.update(1)
    if step % config.log_every == 0 or step == total:
      metrics = jax.device_get(metrics)
      now = time.perf_counter()
      step_seconds = (now - last_time) / (step - last_step)
      last_time, last_step = now, step
      metrics.update({'perf/step_seconds': step_seconds, 'perf/examples_per_sec': config.batch_size / step_seconds})
      writer.write(step, metrics)
      bar.set_postfix(loss=f'{metrics["train/loss"]:.4f}', lr=f'{metrics["train/learning_rate"]:.2e}')
    if step % config.eval_every == 0 or step == total:
      results = run_eval(s, state.params, state.model_state, eval_step)
      writer.write(step, results)
      if is_main:
        bar.write(f'step {step}: eval accuracy {results["eval/accuracy"]:.4f}, loss {results["eval/loss"]:.4f}')
      last_time = time.perf_counter()  # Evaluation time is not training throughput.
    if step % config.checkpoint_every == 0 or step == total:
      ckpt.save(step, state)
  bar.close()
  ckpt.wait()
  ckpt.close()
  writer.close()
  if is_main:
    print(f'Checkpoints: {ckpt.directory}\nMetrics: {writer.path}\nTensorBoard: tensorboard --logdir {writer.tb_dir}')
  return results


def evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Restores the latest checkpoint of `workdir`, evaluates it, writes `DIR/eval.json` and returns the figures."""
  if other := _task_trainer(config):
    return other.evaluate(config, workdir)
  s = setup_lib.build(config, workdir)
  ckpt = _checkpointer(config, workdir)
  step = ckpt.latest_step()
  if step is None:
    raise ConfigError(f'no checkpoint in {ckpt.directory}; train first: python train.py --config=... '
                      f'--workdir={workdir}')
  state = ckpt.restore(state_lib.abstract(s.model, s.tx, s.input_shape, s.state_shardings), step)
  results = {'step': step, **run_eval(s, state.params, state.model_state)}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'eval.json'), 'w') as f:
      json.dump(results, f, indent=1)
  ckpt.close()
  return results
