"""The diffusion train state (parameters, optimizer state, fixed variables, EMA weights) created directly sharded,
and the diffusion losses (DDPM's hybrid loss, rectified flow) for the shared train step of `training.steps`."""
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from vision_models import parallel
from vision_models.diffusion import flow
from vision_models.diffusion.gaussian import GaussianDiffusion, uniform_timesteps
from vision_models.training import steps
from vision_models.training.state import jit_init


@flax.struct.dataclass
class DiffusionState:
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any  # Variables other than params: DiT's `constants/pos_embed`.
  ema_params: Any  # Exponential moving average of params, the weights used for sampling.


def ema_update(ema: Any, params: Any, decay: float) -> Any:
  """ema ← decay · ema + (1 − decay) · params (DiT's `update_ema`)."""
  return optax.incremental_update(params, ema, 1.0 - decay)


def _init_variables(model: nn.Module, input_shape: tuple[int, ...], rng: jax.Array) -> Any:
  x = jnp.zeros((1, *input_shape), jnp.float32)
  return model.init({'params': rng, 'dropout': rng}, x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32), train=False)


def _init_state(model: nn.Module, tx: optax.GradientTransformation, input_shape: tuple[int, ...],
                rng: jax.Array) -> DiffusionState:
  variables = dict(nn.unbox(_init_variables(model, input_shape, rng)))
  params = variables.pop('params')
  # The EMA starts at the initial weights, as DiT's train.py.
  return DiffusionState(jnp.zeros((), jnp.int32), params, tx.init(params), variables, params)


def shardings(model: nn.Module, tx: optax.GradientTransformation, input_shape: tuple[int, ...], mesh: Mesh,
              rules=parallel.DEFAULT_RULES) -> DiffusionState:
  """NamedShardings of every state leaf from the logical axes; optimizer moments and EMA follow their parameter."""
  boxed = jax.eval_shape(functools.partial(_init_variables, model, input_shape), jax.random.key(0))
  var_shardings = dict(parallel.shardings(boxed, mesh, rules))
  params_sharding = var_shardings.pop('params')
  abstract_opt = jax.eval_shape(tx.init, nn.unbox(boxed)['params'])
  replicated = parallel.replicated(mesh)
  opt_shardings = optax.tree_utils.tree_map_params(
      tx, lambda _, sharding: sharding, abstract_opt, params_sharding,
      transform_non_params=lambda _: replicated, is_leaf=lambda x: isinstance(x, NamedSharding))
  return DiffusionState(replicated, params_sharding, opt_shardings, var_shardings, params_sharding)


def create(model: nn.Module, tx: optax.GradientTransformation, input_shape: tuple[int, ...], rng: jax.Array,
           state_shardings: DiffusionState) -> DiffusionState:
  """Initialises the state inside a jit whose outputs are already laid out over the mesh."""
  return jit_init(functools.partial(_init_state, model, tx, input_shape), state_shardings)(rng)


def abstract(model: nn.Module, tx: optax.GradientTransformation, input_shape: tuple[int, ...],
             state_shardings: DiffusionState) -> DiffusionState:
  """ShapeDtypeStructs with shardings: the restore target of a checkpoint."""
  shapes = jax.eval_shape(functools.partial(_init_state, model, tx, input_shape), jax.random.key(0))
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, state_shardings)


def gaussian_loss(model: nn.Module, diffusion: GaussianDiffusion, rules=parallel.DEFAULT_RULES) -> steps.LossFn:
  """The DDPM loss as a `steps.LossFn` on `batch['image']` (x_0, NHWC in [-1, 1] or latents) and `batch['label']`:
  uniform t, q_sample, the hybrid loss. Timesteps, noise and label dropout come from the step's key."""
  def loss_fn(params, model_state, batch, rng):
    t_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
    x_start, labels = batch['image'], batch['label']
    t = uniform_timesteps(t_rng, x_start.shape[0], diffusion.num_timesteps)
    noise = jax.random.normal(noise_rng, x_start.shape, x_start.dtype)
    terms = diffusion.training_losses(_model_fn(model, params, model_state, labels, dropout_rng, rules),
                                      x_start, t, noise)
    return _loss_and_metrics(terms, model_state)
  return loss_fn


def flow_loss(model: nn.Module, rules=parallel.DEFAULT_RULES, timestep_sampling: str = 'logit_normal',
              mean: float = 0.0, std: float = 1.0) -> steps.LossFn:
  """The rectified-flow loss (`flow.training_losses`) as a `steps.LossFn`, t drawn by `flow.timesteps`."""
  def loss_fn(params, model_state, batch, rng):
    t_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
    x_start, labels = batch['image'], batch['label']
    t = flow.timesteps(t_rng, x_start.shape[0], timestep_sampling, mean, std)
    noise = jax.random.normal(noise_rng, x_start.shape, x_start.dtype)
    terms = flow.training_losses(_model_fn(model, params, model_state, labels, dropout_rng, rules), x_start, t, noise)
    return _loss_and_metrics(terms, model_state)
  return loss_fn


def _model_fn(model, params, model_state, labels, dropout_rng, rules):
  def fn(x, t_model):
    with nn.logical_axis_rules(rules):
      return model.apply({'params': params, **model_state}, x, t_model, labels, train=True,
                         rngs={'dropout': dropout_rng})
  return fn


def _loss_and_metrics(terms: dict[str, jax.Array], model_state: Any):
  loss = terms['loss'].mean()
  metrics = {'train/loss': loss, 'train/mse': terms['mse'].mean()}
  if 'vb' in terms:
    metrics['train/vb'] = terms['vb'].mean()
  return loss, (metrics, model_state)
