"""Rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2022) as in SD3 (Esser et al. 2024): the straight
path x_t = (1 − t)·x_0 + t·ε between data (t = 0) and noise (t = 1), a model predicting its velocity ε − x_0 with an
MSE loss, timesteps drawn logit-normal (SD3's default: more weight on the middle of the path), and ODE samplers (Euler,
Heun) integrating dx/dt = v from t = 1 down to t = 0, with classifier-free guidance through `samplers.guided`.

The model is conditioned on `TIME_SCALE · t`, the range DiT's sinusoidal timestep embedding was built for. A model
function is `model_fn(x_t, t_model, y) -> velocity` as in `samplers`; everything is pure jnp (jits and shards).
"""
from typing import Callable

import jax
import jax.numpy as jnp

from vision_models.diffusion.gaussian import mean_flat
from vision_models.errors import ConfigError

TIME_SCALE = 1000.0
METHODS = ('euler', 'heun')
TIMESTEP_SAMPLINGS = ('logit_normal', 'uniform')
ModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _expand(t: jax.Array, ndim: int) -> jax.Array:
  return t.reshape(-1, *(1,) * (ndim - 1))


def interpolate(x_start: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """x_t = (1 − t)·x_0 + t·ε for t `[batch]` in [0, 1]."""
  t = _expand(t, x_start.ndim).astype(x_start.dtype)
  return (1 - t) * x_start + t * noise


def velocity_target(x_start: jax.Array, noise: jax.Array) -> jax.Array:
  """d x_t / dt = ε − x_0, the regression target."""
  return noise - x_start


def logit_normal_timesteps(rng: jax.Array, batch: int, mean: float = 0.0, std: float = 1.0) -> jax.Array:
  """t = sigmoid(n), n ~ N(mean, std²): SD3's logit-normal sampling (mean 0, std 1 there)."""
  return jax.nn.sigmoid(mean + std * jax.random.normal(rng, (batch,)))


def timesteps(rng: jax.Array, batch: int, sampling: str = 'logit_normal', mean: float = 0.0,
              std: float = 1.0) -> jax.Array:
  """Training timesteps in (0, 1): `logit_normal` (with `mean`, `std`) or `uniform`."""
  if sampling == 'logit_normal':
    return logit_normal_timesteps(rng, batch, mean, std)
  if sampling == 'uniform':
    return jax.random.uniform(rng, (batch,))
  raise ConfigError(f'unknown config.diffusion.timestep_sampling {sampling!r}; choose one of '
                    f'{", ".join(TIMESTEP_SAMPLINGS)}')


def training_losses(model_fn: Callable[[jax.Array, jax.Array], jax.Array], x_start: jax.Array, t: jax.Array,
                    noise: jax.Array) -> dict[str, jax.Array]:
  """Per-example `loss` = `mse` between the predicted and the true velocity; `model_fn(x_t, t_model)`."""
  output = model_fn(interpolate(x_start, noise, t), TIME_SCALE * t)
  if output.shape != x_start.shape:
    raise ConfigError(f'rectified flow needs a model output shaped like its input {x_start.shape[1:]}, got '
                      f'{output.shape[1:]}; set config.model.learn_sigma=False')
  mse = mean_flat((output - velocity_target(x_start, noise)) ** 2)
  return {'loss': mse, 'mse': mse}


def sample(model_fn: ModelFn, noise: jax.Array, y: jax.Array, num_steps: int, method: str = 'euler') -> jax.Array:
  """Integrates from x_1 = `noise` to x_0 over `num_steps` uniform steps in t (Heun: 2 model calls a step, second
  order), as one `lax.fori_loop`."""
  if method not in METHODS:
    raise ConfigError(f'unknown flow sampler {method!r}; choose one of {", ".join(METHODS)}')
  if num_steps < 1:
    raise ConfigError(f'config.sample.num_steps={num_steps} must be a positive integer')
  times = jnp.linspace(1.0, 0.0, num_steps + 1)

  def velocity(x, t):
    return model_fn(x, jnp.full((x.shape[0],), TIME_SCALE * t), y)

  def body(i, x):
    t, t_next = times[i], times[i + 1]
    h = t_next - t  # Negative: time runs backwards.
    d = velocity(x, t)
    if method == 'euler':
      return x + h * d
    d_next = velocity(x + h * d, t_next)
    return x + h * 0.5 * (d + d_next)

  return jax.lax.fori_loop(0, num_steps, body, noise)
