"""The jitted train and eval steps. They know nothing of the model family: any classifier `apply(v, x, train)`."""
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from vision_models import parallel
from vision_models.training.state import TrainState

Metrics = dict[str, jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy against (smoothed) one-hot integer labels."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, lr_schedule: optax.Schedule,
                    mesh: Mesh, state_shardings: TrainState, label_smoothing: float = 0.0,
                    rules=parallel.DEFAULT_RULES) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, Metrics]]:
  """`step(state, batch, rng) -> (state, metrics)` as one jit with explicit input and output shardings.

  The dropout / drop-path key is `fold_in(rng, state.step)`, a function of the step, so a resumed run draws the same
  randomness as an uninterrupted one.
  """
  def step(state: TrainState, batch: dict, rng: jax.Array):
    step_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      variables = {'params': params, **state.model_state}
      with nn.logical_axis_rules(rules):
        logits, new_model_state = model.apply(variables, batch['image'], train=True, rngs={'dropout': step_rng},
                                              mutable=list(state.model_state))
      loss = cross_entropy(logits, batch['label'], label_smoothing).mean()
      return loss, (logits, new_model_state)

    (loss, (logits, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        'train/loss': loss,
        'train/accuracy': (logits.argmax(-1) == batch['label']).mean(),
        'train/learning_rate': lr_schedule(state.step),
        'train/grad_norm': optax.global_norm(grads),
        'train/param_norm': optax.global_norm(params),
    }
    return TrainState(state.step + 1, params, opt_state, dict(new_model_state)), metrics

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
