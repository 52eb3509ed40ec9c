"""Ancestral DDPM and DDIM sampling loops (`lax.fori_loop`, so a whole chain is one jitted program) and
classifier-free guidance.

A model function here is `model_fn(x_t, t_model, y) -> output` (DiT's apply with the variables bound), `t_model`
being the diffusion's `model_timesteps(t)`. Sampling runs with `clip_denoised=False` by default, as DiT does.
"""
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vision_models.diffusion.gaussian import GaussianDiffusion
from vision_models.errors import ConfigError

ModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
METHODS = ('ddpm', 'ddim')


def guided(model_fn: ModelFn, scale: float, null_label: int, guidance_channels: int | None = None) -> ModelFn:
  """Classifier-free guidance: ε̂ = ε(x, ∅) + scale · (ε(x, y) − ε(x, ∅)), one model call on the doubled batch.

  Guidance applies to the first `guidance_channels` output channels (None: all of x's channels, i.e. all of ε); the
  remaining channels (the variance) are the conditional output's. `guidance_channels=3` reproduces the official
  `forward_with_cfg` on 4-channel latents, which guides only 3 of ε's channels "for exact reproducibility".
  """
  def fn(x: jax.Array, t: jax.Array, y: jax.Array) -> jax.Array:
    out = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                   jnp.concatenate([y, jnp.full_like(y, null_label)]))
    cond, uncond = jnp.split(out, 2)
    k = x.shape[-1] if guidance_channels is None else guidance_channels
    eps = uncond[..., :k] + scale * (cond[..., :k] - uncond[..., :k])
    return jnp.concatenate([eps, cond[..., k:]], axis=-1)
  return fn


def _nonzero(t: jax.Array, ndim: int) -> jax.Array:
  """1 except at the last step (t = 0), which adds no noise."""
  return (t != 0).astype(jnp.float32).reshape(-1, *(1,) * (ndim - 1))


def ddpm_step(model_fn: ModelFn, diffusion: GaussianDiffusion, x: jax.Array, t: jax.Array, y: jax.Array,
              rng: jax.Array, clip_denoised: bool = False) -> jax.Array:
  """x_{t-1} ~ p(x_{t-1} | x_t) with the model's (learned) variance."""
  out = diffusion.p_mean_variance(model_fn(x, diffusion.model_timesteps(t), y), x, t, clip_denoised)
  noise = jax.random.normal(rng, x.shape, x.dtype)
  return out['mean'] + _nonzero(t, x.ndim) * jnp.exp(0.5 * out['log_variance']) * noise


def ddim_step(model_fn: ModelFn, diffusion: GaussianDiffusion, x: jax.Array, t: jax.Array, y: jax.Array,
              rng: jax.Array, clip_denoised: bool = False, eta: float = 0.0) -> jax.Array:
  """DDIM (Song et al., eq. 12): deterministic for eta = 0, ancestral-like noise for eta = 1."""
  out = diffusion.p_mean_variance(model_fn(x, diffusion.model_timesteps(t), y), x, t, clip_denoised)
  eps = diffusion.predict_eps_from_xstart(x, t, out['pred_xstart'])
  alpha_bar = diffusion._at(diffusion.alphas_cumprod, t, x.ndim)
  alpha_bar_prev = diffusion._at(diffusion.alphas_cumprod_prev, t, x.ndim)
  sigma = eta * jnp.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * jnp.sqrt(1 - alpha_bar / alpha_bar_prev)
  mean = out['pred_xstart'] * jnp.sqrt(alpha_bar_prev) + jnp.sqrt(1 - alpha_bar_prev - sigma ** 2) * eps
  noise = jax.random.normal(rng, x.shape, x.dtype)
  return mean + _nonzero(t, x.ndim) * sigma * noise


def sample(model_fn: ModelFn, diffusion: GaussianDiffusion, noise: jax.Array, y: jax.Array, rng: jax.Array,
           method: str = 'ddpm', eta: float = 0.0, clip_denoised: bool = False) -> jax.Array:
  """Runs the chain from x_T = `noise` down to x_0 over every step of `diffusion` (respace it for fewer steps).
  Step i draws its noise from `fold_in(rng, i)`."""
  if method not in METHODS:
    raise ConfigError(f'unknown sampler {method!r}; choose one of {", ".join(METHODS)}')
  last = diffusion.num_timesteps - 1

  def body(i, x):
    t = jnp.full((x.shape[0],), last - i)
    step_rng = jax.random.fold_in(rng, i)
    if method == 'ddpm':
      return ddpm_step(model_fn, diffusion, x, t, y, step_rng, clip_denoised)
    return ddim_step(model_fn, diffusion, x, t, y, step_rng, clip_denoised, eta)

  return jax.lax.fori_loop(0, diffusion.num_timesteps, body, noise)


def to_uint8(x: jax.Array | np.ndarray) -> np.ndarray:
  """[-1, 1] samples → uint8 as the official `sample_ddp.py`: clamp(127.5 x + 128, 0, 255), truncated."""
  return np.clip(127.5 * np.asarray(x, np.float32) + 128.0, 0, 255).astype(np.uint8)
