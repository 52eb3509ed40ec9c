"""Rectified flow against closed forms: the path and its velocity, logit-normal moments, and the Euler / Heun samplers
integrating the exact velocity field between two Gaussians (whose ODE solution is known), with guidance."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

from vision_models.diffusion import flow, samplers
from vision_models.errors import ConfigError

SHAPE = (512, 2, 2, 3)


def test_interpolation_target_and_loss():
  rng = np.random.default_rng(0)
  x0, noise = rng.normal(size=(2, *SHAPE[:1], 4)).astype(np.float32)
  t = rng.uniform(size=SHAPE[0]).astype(np.float32)
  xt = flow.interpolate(x0, noise, t)
  np.testing.assert_allclose(xt, (1 - t[:, None]) * x0 + t[:, None] * noise, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(flow.interpolate(x0, noise, np.zeros_like(t)), x0)
  np.testing.assert_allclose(flow.interpolate(x0, noise, np.ones_like(t)), noise)
  h = 1e-2  # The path is straight: its finite difference is the target exactly.
  slope = (flow.interpolate(x0, noise, t + h) - xt) / h
  np.testing.assert_allclose(slope, flow.velocity_target(x0, noise), rtol=1e-3, atol=2e-3)
  np.testing.assert_array_equal(flow.velocity_target(x0, noise), noise - x0)

  seen = {}

  def model_fn(x, t_model):
    seen['t'] = t_model
    return x  # Predicts x_t: loss = mean((x_t − (ε − x_0))²).
  terms = flow.training_losses(model_fn, x0, t, noise)
  np.testing.assert_allclose(seen['t'], 1000 * t, rtol=1e-6)
  np.testing.assert_allclose(terms['loss'], ((xt - (noise - x0)) ** 2).mean(-1), rtol=1e-5)
  assert float(flow.training_losses(lambda x, s: noise - x0, x0, t, noise)['loss'].max()) == 0.0
  with pytest.raises(ConfigError, match='learn_sigma=False'):
    flow.training_losses(lambda x, s: jnp.concatenate([x, x], -1), x0, t, noise)


@pytest.mark.parametrize('mean,std', [(0.0, 1.0), (0.5, 0.8)])
def test_logit_normal_moments(mean, std):
  t = np.asarray(flow.timesteps(jax.random.key(0), 200_000, 'logit_normal', mean, std), np.float64)
  assert 0 < t.min() and t.max() < 1
  logits = special.logit(t)
  np.testing.assert_allclose([logits.mean(), logits.std()], [mean, std], atol=0.01)
  # E[t] and Var[t] by quadrature of sigmoid(mean + std·z) against the standard normal density.
  moment = lambda k: integrate.quad(lambda z: special.expit(mean + std * z) ** k * stats.norm.pdf(z), -12, 12)[0]
  np.testing.assert_allclose(t.mean(), moment(1), atol=2e-3)
  np.testing.assert_allclose(t.var(), moment(2) - moment(1) ** 2, rtol=0.02)
  assert stats.kstest((logits - mean) / std, 'norm').pvalue > 1e-3
  u = flow.timesteps(jax.random.key(1), 100_000, 'uniform')
  np.testing.assert_allclose([u.mean(), u.var()], [0.5, 1 / 12], atol=4e-3)
  with pytest.raises(ConfigError, match='timestep_sampling'):
    flow.timesteps(jax.random.key(0), 4, 'cosine')


MU = np.array([1.5, -0.5, 0.25], np.float32)  # Data N(μ, σ²) per channel.
SIGMA = np.array([0.3, 2.0, 1.0], np.float32)


def gaussian_velocity(mu, sigma):
  """E[ε − x_0 | x_t = x] for x_0 ~ N(μ, σ²): the exact flow between N(μ, σ²) (t = 0) and N(0, 1) (t = 1), under
  which x_t = (1 − t)μ + s(t)·ε with s(t)² = (1 − t)²σ² + t², so x_0 = μ + σ·ε starting from x_1 = ε."""
  def fn(x, t_model, y):
    t = (t_model / flow.TIME_SCALE).reshape(-1, 1, 1, 1)
    var = (1 - t) ** 2 * sigma ** 2 + t ** 2
    return -mu + (t - (1 - t) * sigma ** 2) / var * (x - (1 - t) * mu)
  return fn


def sample_error(method, steps, velocity=gaussian_velocity(MU, SIGMA), mu=MU):
  noise = jax.random.normal(jax.random.key(0), SHAPE)
  x0 = flow.sample(velocity, noise, jnp.zeros(SHAPE[0], jnp.int32), steps, method)
  return float(jnp.abs(x0 - (mu + SIGMA * noise)).max())


def test_euler_and_heun_integrate_the_gaussian_flow():
  euler = {n: sample_error('euler', n) for n in (10, 20, 200)}
  heun = {n: sample_error('heun', n) for n in (10, 20, 40)}
  assert euler[200] < 0.05  # Converges to the exact solution (max error over 512·12 values, σ up to 2).
  assert euler[10] / euler[20] == pytest.approx(2, rel=0.35)  # First order.
  assert heun[10] / heun[20] > 3  # Second order.
  assert heun[10] < euler[10] / 5 and heun[20] < euler[20] / 5  # Heun beats Euler at equal steps.
  assert heun[40] < 3e-3
  with pytest.raises(ConfigError, match='flow sampler'):
    flow.sample(gaussian_velocity(MU, SIGMA), jnp.zeros(SHAPE), jnp.zeros(SHAPE[0], jnp.int32), 4, 'rk4')


def test_guided_flow_lands_on_the_extrapolated_mean():
  """The Gaussian velocity is affine in μ, so guiding between class μ_1 and the null class μ_∅ with scale s is the
  flow of μ_∅ + s·(μ_1 − μ_∅)."""
  mu_null, scale = np.array([0.0, 1.0, -1.0], np.float32), 2.5
  fields = {1: gaussian_velocity(MU, SIGMA), 0: gaussian_velocity(mu_null, SIGMA)}

  def conditional(x, t, y):
    return jnp.where((y == 1).reshape(-1, 1, 1, 1), fields[1](x, t, y), fields[0](x, t, y))
  noise = jax.random.normal(jax.random.key(0), SHAPE)
  x0 = flow.sample(samplers.guided(conditional, scale, null_label=0), noise, jnp.ones(SHAPE[0], jnp.int32), 64, 'heun')
  np.testing.assert_allclose(x0, mu_null + scale * (MU - mu_null) + SIGMA * noise, atol=3e-3)
