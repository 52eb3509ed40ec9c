"""The jitted train and eval steps. They know nothing of the model family: any classifier `apply(v, x, train)`."""
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from vision_models import parallel
from vision_models.training import mixup as mixup_lib
from vision_models.training.state import TrainState

Metrics = dict[str, jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy against (smoothed) one-hot integer labels."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, tuple[Metrics, Any]]]


def classification_loss(model: nn.Module, label_smoothing: float = 0.0, rules=parallel.DEFAULT_RULES,
                        mixup: dict | None = None, mixup_groups: int = 1,
                        preprocess: Callable[[jax.Array, jax.Array], jax.Array] | None = None) -> LossFn:
  """`loss_fn(params, model_state, batch, rng) -> (loss, (metrics, new_model_state))` for a classifier.

  `mixup` (keyword arguments of `mixup.mixup_cutmix`: mixup_alpha, cutmix_alpha, switch_prob, prob) mixes each batch
  inside the step; `mixup_groups` (the data-parallel size) keeps every mixed pair on one device. `preprocess(images,
  key)` (`config.data.pp_device`) augments the batch on the accelerator first.
  """
  def loss_fn(params, model_state, batch, rng):
    images = batch['image']
    if preprocess is not None:
      images = preprocess(images, jax.random.fold_in(rng, 2))
    targets = optax.smooth_labels(jax.nn.one_hot(batch['label'], model.num_classes), label_smoothing)
    if mixup:
      images, targets = mixup_lib.mixup_cutmix(jax.random.fold_in(rng, 1), images, jax.nn.one_hot(
          batch['label'], model.num_classes), label_smoothing=label_smoothing, groups=mixup_groups, **mixup)
    with nn.logical_axis_rules(rules):
      logits, new_model_state = model.apply({'params': params, **model_state}, images, train=True,
                                            rngs={'dropout': rng}, mutable=list(model_state))
    loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
    accuracy = (logits.argmax(-1) == batch['label']).mean()
    return loss, ({'train/loss': loss, 'train/accuracy': accuracy}, dict(new_model_state))
  return loss_fn


def _micro_batches(batch: dict, accum_steps: int) -> dict:
  """[B, ...] → [k, B/k, ...] where micro-batch j holds examples j, j+k, ...: each one stays spread over every
  data-parallel device instead of living on 1/k of them."""
  def split(x):
    x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, lr_schedule: optax.Schedule, mesh: Mesh,
                    state_shardings: Any, accum_steps: int = 1, skip_nonfinite: bool = False,
                    ema_decay: float | None = None) -> Callable[[Any, dict, jax.Array], tuple[Any, Metrics]]:
  """`step(state, batch, rng) -> (state, metrics)` as one jit with explicit input and output shardings.

  With `accum_steps > 1` the batch is split into that many micro-batches whose gradients are averaged inside the
  step (a `lax.scan`, so memory is that of one micro-batch). The dropout key is `fold_in(rng, step)` (and the
  micro-batch index): a resumed run draws the same randomness as an uninterrupted one. With `skip_nonfinite`, an
  update whose loss or gradients are not finite is dropped (parameters and optimizer state stay) and counted in
  `train/skipped`. The state is a `TrainState` or any struct with its fields; with `ema_decay` it also has
  `ema_params`, moved towards the new parameters after each update (the diffusion state).
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: TrainState, batch: dict, rng: jax.Array):
    step_rng = jax.random.fold_in(rng, state.step)
    if accum_steps == 1:
      (_, (metrics, model_state)), grads = grad_fn(state.params, state.model_state, batch, step_rng)
    else:
      def accumulate(carry, xs):
        grads_sum, model_state = carry
        index, micro = xs
        (_, (metrics, model_state)), grads = grad_fn(state.params, model_state, micro,
                                                     jax.random.fold_in(step_rng, index))
        return (jax.tree.map(jnp.add, grads_sum, grads), model_state), metrics

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, model_state), metrics = jax.lax.scan(
          accumulate, (zeros, state.model_state), (jnp.arange(accum_steps), _micro_batches(batch, accum_steps)))
      grads = jax.tree.map(lambda g: g / accum_steps, grads)
      metrics = jax.tree.map(jnp.mean, metrics)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    new = state.replace(params=params, opt_state=opt_state, model_state=model_state)
    if ema_decay is not None:
      new = new.replace(ema_params=optax.incremental_update(params, state.ema_params, 1.0 - ema_decay))
    if skip_nonfinite:
      finite = jnp.isfinite(metrics['train/loss']) & jnp.isfinite(grad_norm)
      new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
      metrics['train/skipped'] = 1.0 - finite.astype(jnp.float32)
    metrics = {**metrics, 'train/learning_rate': lr_schedule(state.step), 'train/grad_norm': grad_norm,
               'train/param_norm': optax.global_norm(new.params)}
    return new.replace(step=state.step + 1), metrics

  batch_sharding = parallel.batch_sharding(mesh)
  replicated = parallel.replicated(mesh)
  return parallel.under_mesh(jax.jit(step, in_shardings=(state_shardings, batch_sharding, replicated),
                                     out_shardings=(state_shardings, replicated), donate_argnums=(0,)), mesh)


def make_eval_step(model: nn.Module, mesh: Mesh, params_sharding: Any, model_state_sharding: Any,
                   rules=parallel.DEFAULT_RULES) -> Callable[[Any, Any, dict], Metrics]:
  """`eval_step(params, model_state, batch) -> sums` of loss, top-1 and top-5 hits and examples over the
  unmasked part of the batch, plus per-class hits and counts."""
  def step(params, model_state, batch):
    with nn.logical_axis_rules(rules):
      logits = model.apply({'params': params, **model_state}, batch['image'], train=False)
    mask = batch['mask']
    labels = batch['label']
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    top1_hit = (top5[:, 0] == labels) * mask
    one_hot = jax.nn.one_hot(labels, logits.shape[-1]) * mask[:, None]
    return {
        'loss': (cross_entropy(logits, labels) * mask).sum(),
        'top1': top1_hit.sum(),
        'top5': ((top5 == labels[:, None]).any(-1) * mask).sum(),
        'count': mask.sum(),
        'class_hits': (one_hot * top1_hit[:, None]).sum(0),
        'class_count': one_hot.sum(0),
    }

  replicated = parallel.replicated(mesh)
  return parallel.under_mesh(jax.jit(step, out_shardings=replicated, in_shardings=(
      params_sharding, model_state_sharding, parallel.batch_sharding(mesh))), mesh)
