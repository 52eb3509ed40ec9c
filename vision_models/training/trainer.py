"""The canonical trainer, read top to bottom: setup → state (fresh or restored) → loop of steps with logging,
evaluation and checkpoints → final evaluation. `evaluate` restores a workdir's latest checkpoint and evaluates it.

The loop (`run`) serves every task: a `Task` supplies the setup, the state, the loss and the evaluation
(classification here, diffusion in `vision_models.diffusion.trainer`), so each gets the same guards: SIGTERM
checkpointing, non-finite checks or skipping, corrupt-checkpoint fallback, exact resume, gradient accumulation."""
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vision_models import data, models, parallel
from vision_models.errors import ConfigError
from vision_models.training import graft as graft_lib, guards, optim, perf, setup as setup_lib, state as state_lib
from vision_models.training import device_preprocess, steps
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
  for batch in data.eval_batches(cfg.name, cfg.eval_split, cfg.get('data_dir'), cfg.pp_eval, s.per_host_batch,
                                 cfg.get('on_corrupt', 'skip')):
    sums = jax.device_get(eval_step(params, model_state, parallel.to_global(batch, s.mesh)))
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
  count = max(float(totals['count']), 1.0)
  per_class = totals['class_hits'] / np.maximum(totals['class_count'], 1)
  return {'eval/accuracy': float(totals['top1']) / count, 'eval/top5_accuracy': float(totals['top5']) / count,
          'eval/loss': float(totals['loss']) / count, 'eval/examples': int(count),
          'eval/per_class_accuracy': [round(float(a), 6) for a in per_class]}


def evaluate_state(s: setup_lib.Setup, state: state_lib.TrainState, eval_step=None) -> dict[str, Any]:
  """`eval/...` figures of the weights, and `eval_ema/...` of their EMA when the optimizer keeps one."""
  results = run_eval(s, state.params, state.model_state, eval_step)
  ema = optim.ema_params(state.opt_state)
  if ema is not None:
    results.update({k.replace('eval/', 'eval_ema/'): v for k, v in
                    run_eval(s, ema, state.model_state, eval_step).items()})
  return results


class Task:
  """What the loop needs from a task: its setup `s` (config, model, mesh, optimizer, state shardings), the state, the
  loss, and what to evaluate. This class is classification; `vision_models.diffusion.trainer.DiffusionTask` is
  diffusion. The loop below (`run`) is the same for both."""
  postfix = (('loss', 'train/loss', '.4f'), ('lr', 'train/learning_rate', '.2e'))  # Progress-bar figures.
  ema_decay: float | None = None  # An EMA kept in the state (`ema_params`) besides the optimizer's own.

  def __init__(self, config: Any, workdir: str | None = None):
    self.config = config
    self.s = self.build(config, workdir)

  def build(self, config: Any, workdir: str | None) -> Any:
    return setup_lib.build(config, workdir)

  def abstract_state(self) -> Any:
    s = self.s
    return state_lib.abstract(s.model, s.tx, s.input_shape, s.state_shardings)

  def create_state(self, rng: jax.Array) -> Any:
    s = self.s
    return state_lib.create(s.model, s.tx, s.input_shape, rng, s.state_shardings)

  def loss_fn(self) -> steps.LossFn:
    s, mixup = self.s, self.config.get('mixup')
    return steps.classification_loss(s.model, self.config.get('label_smoothing', 0.0), s.rules,
                                     dict(mixup) if mixup else None, parallel.data_parallel_size(s.mesh),
                                     self.device_augment())

  def device_augment(self) -> device_preprocess.DeviceOp | None:
    """The augmentation the step runs on the accelerator (`config.data.pp_device`), or None."""
    spec = self.config.data.get('pp_device')
    return device_preprocess.parse(spec) if spec else None

  def state_from_variables(self, variables: Any) -> Any:
    """A step-0 state holding `variables` (a grafted start, `config.init_from`), laid out over the mesh."""
    def make(v):
      v = dict(v)
      params = v.pop('params')
      return state_lib.TrainState(jnp.zeros((), jnp.int32), params, self.s.tx.init(params), v)
    return jax.jit(make, out_shardings=self.s.state_shardings)(variables)

  def model_for(self, config: Any) -> Any:
    """The model another config (of the same task and data) builds: the old model of a graft."""
    return models.create(config.model.name, num_classes=self.s.dataset.num_classes, **setup_lib.model_kwargs(config))

  def model_inputs(self, batch: dict, rng: jax.Array) -> tuple:
    """The positional model inputs of a host batch (grafting initialises and distils on them)."""
    preprocess = self.device_augment()
    return (batch['image'] if preprocess is None else preprocess(jnp.asarray(batch['image']), rng),)

  def batches(self, start: int) -> data.TrainBatches:
    cfg = self.config.data
    return data.TrainBatches(cfg.name, cfg.train_split, cfg.get('data_dir'), cfg.pp_train, self.s.per_host_batch,
                             seed=self.config.seed, start_step=start, shuffle_buffer=cfg.get('shuffle_buffer', 10_000),
                             on_corrupt=cfg.get('on_corrupt', 'skip'), repeated_aug=cfg.get('repeated_aug', 1),
                             feature=cfg.get('feature', 'image'))

  def evaluator(self) -> Callable[[Any], dict[str, Any]] | None:
    """`evaluate(state) -> figures`, run every `config.eval_every` steps and at the end; None: no evaluation."""
    eval_step = steps.make_eval_step(self.s.model, self.s.mesh, self.s.state_shardings.params,
                                     self.s.state_shardings.model_state, self.s.rules)
    return lambda state: evaluate_state(self.s, state, eval_step)

  def eval_line(self, results: dict[str, Any]) -> str:
    return f'eval accuracy {results["eval/accuracy"]:.4f}, loss {results["eval/loss"]:.4f}'


def _task(config: Any, workdir: str | None = None) -> Task:
  task = config.get('task', 'classification')
  if task == 'diffusion':
    from vision_models.diffusion import trainer as diffusion_trainer
    return diffusion_trainer.DiffusionTask(config, workdir)
  if task != 'classification':
    raise ConfigError(f"unknown config.task {task!r}; choose 'classification' or 'diffusion'")
  return Task(config, workdir)


def train(config: Any, workdir: str) -> dict[str, Any]:
  """Trains `config` (`config.task` 'classification', the default, or 'diffusion') in `workdir`, resuming from its
  latest good checkpoint; returns the final evaluation (the last logged train metrics for a task without one).

  SIGTERM finishes the current step, writes a checkpoint, waits for it and returns. A non-finite loss or gradient
  raises TrainingError (the last good checkpoint stays) unless `config.skip_nonfinite` drops such updates.
  """
  return run(_task(config, workdir), workdir)


def initial_state(task: Task, rng: jax.Array) -> Any:
  """A fresh state, or with `config.init_from` one started from another run's checkpoint: `{'workdir': DIR}` (or
  `'checkpoint': DIR/checkpoints/STEP`), `'graft': True` to accept another architecture (matching variables copied,
  the rest initialised; `graft.py`), `'distill_steps': N` to fit the new parameters to the old model's block outputs
  on the first batch first (needs `'config'`, the old run's config file or config; `'distill_lr'`, default 1e-3)."""
  init_from = task.config.get('init_from')
  if not init_from:
    return task.create_state(rng)
  old_variables = graft_lib.load_variables(init_from)
  inputs = task.model_inputs(next(task.batches(0)), rng)
  steps_n = init_from.get('distill_steps', 0)
  old_config = setup_lib.load_config(init_from['config'], 'init_from.config') if init_from.get('config') else None
  old_module = task.model_for(old_config) if old_config is not None else None
  variables, report = graft_lib.graft(old_variables, task.s.model, inputs, rng, distill=steps_n, old_module=old_module,
                                      learning_rate=init_from.get('distill_lr', 1e-3))
  if not init_from.get('graft', False) and (report.created or report.replaced):
    raise ConfigError(f'config.init_from: the checkpoint does not fit this model ({len(report.replaced)} variables '
                      f'replaced, {len(report.created)} created, e.g. {(report.replaced + report.created)[0]}); set '
                      "config.init_from.graft=True to graft, or use the model config it was trained with")
  if jax.process_index() == 0:
    print(report)
  return task.state_from_variables(variables)


def run(task: Task, workdir: str) -> dict[str, Any]:
  """The training loop of every task (see `train`)."""
  s, config = task.s, task.config
  is_main = jax.process_index() == 0
  ckpt = _checkpointer(config, workdir)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  start, state = ckpt.restore_latest_good(task.abstract_state(), set_aside=True)
  if start is None:
    state, start = initial_state(task, init_rng), 0
  elif is_main:
    print(f'Resuming from step {start} in {ckpt.directory}')
  writer = MetricWriter(workdir)
  writer.truncate_after(start)
  skip_nonfinite = config.get('skip_nonfinite', False)
  accum_steps = config.get('grad_accum_steps', 1)
  make_step = lambda accum: steps.make_train_step(task.loss_fn(), s.tx, s.lr_schedule, s.mesh,  # noqa: E731
                                                  s.state_shardings, accum, skip_nonfinite, task.ema_decay)
  train_step = make_step(accum_steps)
  evaluate_fn = task.evaluator()
  eval_every = config.get('eval_every') if evaluate_fn else None
  batches = task.batches(start)
  total = config.total_steps
  results: dict[str, Any] = {}
  metrics: dict[str, Any] = {}
  preemption = guards.Preemption()
  bar = tqdm(total=total, initial=start, disable=not is_main, desc='train', dynamic_ncols=True)
  last_time, last_step, previous, flops = time.perf_counter(), start, None, None
  input_wait = 0.0  # Seconds the loop waited for batches since the last log: near 0 unless the input bounds the run.
  peak = perf.device_peak_flops(config.get('peak_flops_per_device'))
  try:
    for step in range(start + 1, total + 1):
      fetch_start = time.perf_counter()
      batch = parallel.to_global(next(batches), s.mesh)
      input_wait += time.perf_counter() - fetch_start
      if flops is None:  # XLA's cost analysis counts a loop's body once: count the micro-batches' step unrolled
        flops = perf.step_flops(make_step(1) if accum_steps > 1 else train_step, state, batch, step_rng) or 0.0
      state, metrics = train_step(state, batch, step_rng)
      if step == start + 1:  # The first window starts after the compilation, which this call waited for; the step
        last_time, input_wait = time.perf_counter(), 0.0  # itself runs after the call returns, inside the window.
      if previous is not None and not skip_nonfinite:  # The previous step is done by now: checking it costs no stall.
        guards.check_finite(*previous)
      previous = (step, metrics)
      bar.update(1)
      if step % config.log_every == 0 or step == total:
        metrics = jax.device_get(metrics)
        now = time.perf_counter()
        step_seconds = (now - last_time) / (step - last_step)
        metrics.update({'perf/step_seconds': step_seconds, 'perf/examples_per_sec': config.batch_size / step_seconds,
                        'perf/input_wait_fraction': min(1.0, input_wait / (now - last_time)),
                        'perf/model_flops_per_step': flops, 'data/skipped_examples': batches.skipped})
        last_time, last_step, input_wait = now, step, 0.0
        utilisation = perf.mfu(flops, step_seconds, peak, jax.device_count())
        if utilisation is not None:
          metrics['perf/mfu'] = utilisation
        writer.write(step, metrics)
        bar.set_postfix({name: f'{metrics[key]:{fmt}}' for name, key, fmt in task.postfix})
      preempted = preemption.requested()
      due_eval = eval_every is not None and (step % eval_every == 0 or step == total)
      due_save = step % config.checkpoint_every == 0 or step == total or preempted
      if not skip_nonfinite and (due_eval or due_save):  # Never evaluate or save a non-finite update's state.
        guards.check_finite(step, metrics)
      if due_eval:
        results = evaluate_fn(state)
        writer.write(step, results)
        if is_main:
          bar.write(f'step {step}: {task.eval_line(results)}')
        last_time, last_step, input_wait = time.perf_counter(), step, 0.0  # Evaluation is not training throughput.
      if due_save:
        ckpt.save(step, state, force=preempted)
      if preempted:
        if is_main:
          bar.write(f'SIGTERM: saved step {step}; run the same command to resume')
        break
  finally:
    bar.close()
    preemption.close()
    ckpt.wait()
    ckpt.close()
    writer.close()
  if is_main:
    print(f'Checkpoints: {ckpt.directory}\nMetrics: {writer.path}\nTensorBoard: tensorboard --logdir {writer.tb_dir}')
  if evaluate_fn is None:
    return {k: float(v) for k, v in jax.device_get(metrics).items() if np.ndim(v) == 0}
  return results


def evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Restores the latest checkpoint of `workdir`, evaluates it, writes `DIR/eval.json` and returns the figures."""
  if config.get('task', 'classification') == 'diffusion':
    from vision_models.diffusion import trainer as diffusion_trainer
    return diffusion_trainer.evaluate(config, workdir)
  s = setup_lib.build(config, workdir)
  ckpt = _checkpointer(config, workdir)
  step, state = ckpt.restore_latest_good(state_lib.abstract(s.model, s.tx, s.input_shape, s.state_shardings))
  if step is None:
    raise ConfigError(f'no checkpoint in {ckpt.directory}; train first: python train.py --config=... '
                      f'--workdir={workdir}')
  results = {'step': step, **evaluate_state(s, state)}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'eval.json'), 'w') as f:
      json.dump(results, f, indent=1)
  ckpt.close()
  return results
