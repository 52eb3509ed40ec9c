"""Gaussian diffusion as in improved DDPM / ADM / DiT: the schedule's closed forms, the model's learned-range variance,
and the hybrid training loss (ε MSE plus the variational bound, which trains the variance only).

Arrays are NHWC; `t` is an int array `[batch]` of step indices into this diffusion (after respacing, the model sees
`timestep_map[t]`). Schedule constants are computed in float64 with numpy and read as float32, as the official code.
Everything here is pure jnp, so it jits and shards like the model.
"""
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vision_models.errors import ConfigError

VAR_TYPES = ('learned_range', 'fixed_large', 'fixed_small')
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x_t, model timesteps) → model output


def linear_betas(num_timesteps: int = 1000) -> np.ndarray:
  """Ho et al.'s linear schedule 1e-4 → 0.02, rescaled by 1000 / num_timesteps (IDDPM's `linear`)."""
  scale = 1000 / num_timesteps
  return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def mean_flat(x: jax.Array) -> jax.Array:
  return x.mean(axis=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> jax.Array:
  """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x: jax.Array) -> jax.Array:
  """The tanh approximation of Φ the official decoder likelihood uses (kept for bit-compatible losses)."""
  return 0.5 * (1.0 + jnp.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: jax.Array, means: jax.Array, log_scales: jax.Array) -> jax.Array:
  """log P(x) of data quantised to 256 levels in [-1, 1] under N(means, e^(2·log_scales)); the edge bins take the
  tails. Elementwise, in nats."""
  centered = x - means
  inv_std = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def uniform_timesteps(rng: jax.Array, batch: int, num_timesteps: int) -> jax.Array:
  """t ~ U{0, …, T-1}, the sampler DiT trains with."""
  return jax.random.randint(rng, (batch,), 0, num_timesteps)


class GaussianDiffusion:
  """A diffusion process with `betas` (float64, length T), predicting ε with variance `var_type`:
  `learned_range` (the model's extra channels v ∈ [-1, 1] interpolate log β̃_t … log β_t), `fixed_large` (β_t) or
  `fixed_small` (β̃_t). `timestep_map[t]` is the timestep the model is given at step t (respacing)."""

  def __init__(self, betas: np.ndarray, var_type: str = 'learned_range', timestep_map: np.ndarray | None = None):
    if var_type not in VAR_TYPES:
      raise ConfigError(f'unknown diffusion variance type {var_type!r}; choose one of {", ".join(VAR_TYPES)}')
    betas = np.asarray(betas, np.float64)
    if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
      raise ConfigError('diffusion betas must be a 1-D array in (0, 1]')
    self.betas, self.var_type = betas, var_type
    self.num_timesteps = len(betas)
    self.timestep_map = np.arange(self.num_timesteps) if timestep_map is None else np.asarray(timestep_map)
    alphas = 1.0 - betas
    self.alphas_cumprod = np.cumprod(alphas)
    self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
    self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
    # β̃_0 = 0: its log is clipped to β̃_1 (the official convention).
    self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
    self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
    self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

  @staticmethod
  def _at(values: np.ndarray, t: jax.Array, ndim: int) -> jax.Array:
    """values[t] as float32, shaped to broadcast against a `[batch, ...]` array of rank `ndim`."""
    return jnp.asarray(values, jnp.float32)[t].reshape(-1, *(1,) * (ndim - 1))

  def model_timesteps(self, t: jax.Array) -> jax.Array:
    """The (original-schedule) timesteps the model is conditioned on, as floats."""
    return jnp.asarray(self.timestep_map, jnp.float32)[t]

  def q_mean_variance(self, x_start: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean, variance and log variance of q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I)."""
    nd = x_start.ndim
    mean = self._at(np.sqrt(self.alphas_cumprod), t, nd) * x_start
    return (mean, self._at(1.0 - self.alphas_cumprod, t, nd) * jnp.ones_like(x_start),
            self._at(np.log(1.0 - self.alphas_cumprod), t, nd) * jnp.ones_like(x_start))

  def q_sample(self, x_start: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    nd = x_start.ndim
    return (self._at(np.sqrt(self.alphas_cumprod), t, nd) * x_start
            + self._at(np.sqrt(1.0 - self.alphas_cumprod), t, nd) * noise)

  def q_posterior_mean_variance(self, x_start: jax.Array, x_t: jax.Array,
                                t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0)."""
    nd = x_t.ndim
    mean = self._at(self.posterior_mean_coef1, t, nd) * x_start + self._at(self.posterior_mean_coef2, t, nd) * x_t
    ones = jnp.ones_like(x_t)
    return (mean, self._at(self.posterior_variance, t, nd) * ones,
            self._at(self.posterior_log_variance_clipped, t, nd) * ones)

  def predict_xstart_from_eps(self, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    nd = x_t.ndim
    return (self._at(np.sqrt(1.0 / self.alphas_cumprod), t, nd) * x_t
            - self._at(np.sqrt(1.0 / self.alphas_cumprod - 1), t, nd) * eps)

  def predict_eps_from_xstart(self, x_t: jax.Array, t: jax.Array, x_start: jax.Array) -> jax.Array:
    nd = x_t.ndim
    return ((self._at(np.sqrt(1.0 / self.alphas_cumprod), t, nd) * x_t - x_start)
            / self._at(np.sqrt(1.0 / self.alphas_cumprod - 1), t, nd))

  def p_mean_variance(self, model_output: jax.Array, x: jax.Array, t: jax.Array,
                      clip_denoised: bool = False) -> dict[str, jax.Array]:
    """p(x_{t-1} | x_t) from the model's output: `mean`, `variance`, `log_variance` and `pred_xstart`."""
    channels, nd = x.shape[-1], x.ndim
    if self.var_type == 'learned_range':
      if model_output.shape[-1] != 2 * channels:
        raise ConfigError(f'learned-range variance needs {2 * channels} output channels (learn_sigma=True), got '
                          f'{model_output.shape[-1]}')
      eps, var_values = model_output[..., :channels], model_output[..., channels:]
      min_log = self._at(self.posterior_log_variance_clipped, t, nd)
      max_log = self._at(np.log(self.betas), t, nd)
      frac = (var_values + 1) / 2  # v ∈ [-1, 1] spans [β̃_t, β_t] in log space.
      log_variance = frac * max_log + (1 - frac) * min_log
    else:
      eps = model_output[..., :channels]
      if self.var_type == 'fixed_large':  # β_t, with β̃_1 at t = 0 for a better decoder likelihood.
        log_var = np.log(np.append(self.posterior_variance[1], self.betas[1:]))
      else:
        log_var = self.posterior_log_variance_clipped
      log_variance = self._at(log_var, t, nd) * jnp.ones_like(x)
    pred_xstart = self.predict_xstart_from_eps(x, t, eps)
    if clip_denoised:
      pred_xstart = jnp.clip(pred_xstart, -1, 1)
    mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
    return {'mean': mean, 'variance': jnp.exp(log_variance), 'log_variance': log_variance,
            'pred_xstart': pred_xstart}

  def vb_terms_bpd(self, model_output: jax.Array, x_start: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
    """One term of the variational bound per example, in bits per dimension: the discretised Gaussian decoder NLL
    at t = 0, KL(q(x_{t-1} | x_t, x_0) ‖ p(x_{t-1} | x_t)) otherwise."""
    true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
    out = self.p_mean_variance(model_output, x_t, t)
    kl = mean_flat(normal_kl(true_mean, true_log_var, out['mean'], out['log_variance'])) / np.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x_start, out['mean'], 0.5 * out['log_variance'])
    return jnp.where(t == 0, mean_flat(nll) / np.log(2.0), kl)

  def training_losses(self, model_fn: ModelFn, x_start: jax.Array, t: jax.Array,
                      noise: jax.Array) -> dict[str, jax.Array]:
    """Per-example `loss` = `mse` (of ε) + `vb` (learned variances only). The bound sees the ε prediction through a
    stop-gradient, so it trains the variance alone (IDDPM's hybrid loss, DiT's `LossType.MSE`)."""
    x_t = self.q_sample(x_start, t, noise)
    output = model_fn(x_t, self.model_timesteps(t))
    channels = x_start.shape[-1]
    terms = {'mse': mean_flat((noise - output[..., :channels]) ** 2)}
    if self.var_type == 'learned_range':
      frozen = jnp.concatenate([jax.lax.stop_gradient(output[..., :channels]), output[..., channels:]], axis=-1)
      terms['vb'] = self.vb_terms_bpd(frozen, x_start, x_t, t)
      terms['loss'] = terms['mse'] + terms['vb']
    else:
      terms['loss'] = terms['mse']
    return terms
