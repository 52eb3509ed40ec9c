"""Gaussian diffusion against closed forms computed independently in numpy (Bayes' rule for the posterior, the Gaussian
KL, the decoder likelihood), respacing, samplers, guidance and the EMA."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vision_models import diffusion
from vision_models.diffusion import gaussian, samplers
from vision_models.diffusion.train_step import ema_update
from vision_models.errors import ConfigError

T = 1000
SHAPE = (4, 3, 3, 2)  # NHWC


@pytest.fixture(scope='module')
def proc():
  return diffusion.create()


def alpha_bar(t):
  betas = np.linspace(1e-4, 0.02, T)
  return np.cumprod(1 - betas)[t], betas[t]


def random_data(seed=0):
  rng = np.random.default_rng(seed)
  x0 = rng.uniform(-1, 1, SHAPE).astype(np.float32)
  t = np.array([0, 1, 417, 999])
  return rng, x0, t


def test_linear_schedule():
  betas = gaussian.linear_betas(1000)
  assert betas.shape == (1000,) and betas[0] == 1e-4 and np.isclose(betas[-1], 0.02)
  np.testing.assert_allclose(gaussian.linear_betas(250), np.linspace(4e-4, 0.08, 250))


def test_q_moments_closed_form_and_empirical(proc):
  _, x0, t = random_data()
  ab, _ = alpha_bar(t)
  mean, var, log_var = proc.q_mean_variance(jnp.asarray(x0), jnp.asarray(t))
  np.testing.assert_allclose(mean, np.sqrt(ab)[:, None, None, None] * x0, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(var, np.broadcast_to((1 - ab)[:, None, None, None], SHAPE), rtol=1e-5)
  np.testing.assert_allclose(log_var, np.log(np.broadcast_to((1 - ab)[:, None, None, None], SHAPE)), rtol=1e-5)
  # q_sample draws from that distribution.
  n = 20_000
  noise = jax.random.normal(jax.random.key(0), (n, *SHAPE))
  xt = jax.vmap(lambda e: proc.q_sample(jnp.asarray(x0), jnp.asarray(t), e))(noise)
  np.testing.assert_allclose(xt.mean(0), mean, atol=0.03)
  np.testing.assert_allclose(xt.var(0), var, rtol=0.05)


def test_posterior_matches_bayes_rule(proc):
  rng, x0, t = random_data(1)
  t = t[1:]  # t ≥ 1: q(x_{t-1} | x_0) is a proper Gaussian.
  x0 = x0[1:]
  xt = rng.normal(size=x0.shape).astype(np.float32)
  ab, beta = alpha_bar(t)
  ab_prev, _ = alpha_bar(t - 1)
  b = lambda v: v[:, None, None, None]
  # q(x_{t-1} | x_0) = N(√ᾱ_{t-1} x0, 1 - ᾱ_{t-1}); q(x_t | x_{t-1}) = N(√α_t x_{t-1}, β_t): multiply the Gaussians.
  precision = 1 / (1 - ab_prev) + (1 - beta) / beta
  var = 1 / precision
  mean = b(var) * (b(np.sqrt(ab_prev) / (1 - ab_prev)) * x0 + b(np.sqrt(1 - beta) / beta) * xt)
  got_mean, got_var, got_log_var = proc.q_posterior_mean_variance(jnp.asarray(x0), jnp.asarray(xt), jnp.asarray(t))
  np.testing.assert_allclose(got_mean, mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got_var, np.broadcast_to(b(var), x0.shape), rtol=1e-4)
  np.testing.assert_allclose(got_log_var, np.log(np.broadcast_to(b(var), x0.shape)), rtol=1e-4)


def model_output_and_p(proc, x0, xt, t, rng, eps_scale=1.0):
  """A random ε / v output and the p(x_{t-1} | x_t) it implies, computed in numpy."""
  eps = (eps_scale * rng.normal(size=x0.shape)).astype(np.float32)
  v = rng.uniform(-1, 1, x0.shape).astype(np.float32)
  b = lambda a: a[:, None, None, None]
  ab, beta = alpha_bar(t)
  ab_prev = np.where(t > 0, alpha_bar(np.maximum(t - 1, 0))[0], 1.0)
  post_var = beta * (1 - ab_prev) / (1 - ab)
  post_var_t1 = np.linspace(1e-4, 0.02, T)[1] * (1 - alpha_bar(0)[0]) / (1 - alpha_bar(1)[0])
  min_log = np.log(np.where(t == 0, post_var_t1, post_var))
  log_var = (v + 1) / 2 * b(np.log(beta)) + (1 - (v + 1) / 2) * b(min_log)
  pred_x0 = (xt - b(np.sqrt(1 - ab)) * eps) / b(np.sqrt(ab))
  mean = (b(beta * np.sqrt(ab_prev) / (1 - ab)) * pred_x0 + b((1 - ab_prev) * np.sqrt(1 - beta) / (1 - ab)) * xt)
  return np.concatenate([eps, v], -1), mean, log_var


def test_learned_range_p_mean_variance(proc):
  rng, x0, t = random_data(2)
  xt = rng.normal(size=x0.shape).astype(np.float32)
  out, mean, log_var = model_output_and_p(proc, x0, xt, t, rng)
  p = proc.p_mean_variance(jnp.asarray(out), jnp.asarray(xt), jnp.asarray(t))
  np.testing.assert_allclose(p['log_variance'], log_var, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(p['mean'], mean, rtol=1e-3, atol=1e-4)


def test_vlb_kl_for_t_positive(proc):
  rng, x0, t = random_data(3)
  t = np.array([1, 10, 500, 999])
  xt = rng.normal(size=x0.shape).astype(np.float32)
  out, p_mean, p_log_var = model_output_and_p(proc, x0, xt, t, rng)
  q_mean, _, q_log_var = proc.q_posterior_mean_variance(jnp.asarray(x0), jnp.asarray(xt), jnp.asarray(t))
  q_mean, q_var, p_var = np.asarray(q_mean, np.float64), np.exp(np.asarray(q_log_var, np.float64)), np.exp(p_log_var)
  kl = np.log(np.sqrt(p_var / q_var)) + (q_var + (q_mean - p_mean) ** 2) / (2 * p_var) - 0.5
  want = kl.reshape(len(t), -1).mean(1) / np.log(2)
  got = proc.vb_terms_bpd(jnp.asarray(out), jnp.asarray(x0), jnp.asarray(xt), jnp.asarray(t))
  np.testing.assert_allclose(got, want, rtol=2e-3)


def test_vlb_decoder_nll_at_t0(proc):
  rng = np.random.default_rng(4)
  x0 = (rng.integers(0, 256, SHAPE) / 127.5 - 1).astype(np.float32)  # Quantised data, including ±1.
  x0[0, 0, 0] = [-1.0, 1.0]
  t = np.zeros(SHAPE[0], int)
  # Means within a few σ of the data: further out float32 cdf differences underflow (in the official code too).
  xt = (x0 + 0.003 * rng.normal(size=SHAPE)).astype(np.float32)
  out, mean, log_var = model_output_and_p(proc, x0, xt, t, rng, eps_scale=0.3)
  std = np.exp(0.5 * log_var)

  def nll(cdf):
    upper = np.where(x0 > 0.999, 1.0, cdf((x0 - mean + 1 / 255) / std))
    lower = np.where(x0 < -0.999, 0.0, cdf((x0 - mean - 1 / 255) / std))
    return -np.log(np.maximum(upper - lower, 1e-12)).reshape(len(t), -1).mean(1) / np.log(2)

  tanh_cdf = lambda x: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
  got = proc.vb_terms_bpd(jnp.asarray(out), jnp.asarray(x0), jnp.asarray(xt), jnp.asarray(t))
  np.testing.assert_allclose(got, nll(tanh_cdf), rtol=2e-3)  # The official approximation of Φ.
  np.testing.assert_allclose(got, nll(stats.norm.cdf), rtol=3e-2)  # And close to the exact Gaussian.


def test_hybrid_loss_stops_the_vlb_gradient_on_the_mean(proc):
  rng, x0, t = random_data(5)
  noise = rng.normal(size=SHAPE).astype(np.float32)
  out = jnp.asarray(rng.normal(size=SHAPE[:-1] + (4,)).astype(np.float32))
  terms = proc.training_losses(lambda x, tm: out, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))
  np.testing.assert_allclose(terms['mse'], ((noise - out[..., :2]) ** 2).reshape(4, -1).mean(1), rtol=1e-6)
  np.testing.assert_allclose(terms['loss'], terms['mse'] + terms['vb'], rtol=1e-6)
  vb_grad = jax.grad(lambda o: proc.training_losses(lambda x, tm: o, jnp.asarray(x0), jnp.asarray(t),
                                                    jnp.asarray(noise))['vb'].sum())(out)
  np.testing.assert_array_equal(vb_grad[..., :2], 0.0)  # ε is trained by the MSE alone ...
  assert np.abs(vb_grad[..., 2:]).min() > 0  # ... the variance by the bound.


def test_space_timesteps():
  assert diffusion.space_timesteps(1000, '1000') == list(range(1000))
  steps = diffusion.space_timesteps(1000, '250')
  assert len(steps) == 250 and steps[0] == 0 and steps[-1] == 999
  assert diffusion.space_timesteps(1000, 'ddim50') == list(range(0, 1000, 20))
  # The docstring example of IDDPM: 300 steps in sections of 10, 15, 20.
  steps = diffusion.space_timesteps(300, '10,15,20')
  assert steps[:10] == list(range(0, 100, 11)) and len(steps) == 45 and steps[-1] == 299
  with pytest.raises(ConfigError):
    diffusion.space_timesteps(1000, 'ddim999')


@pytest.mark.parametrize('spec', ['abc', 'ddimx', '250,', 'ddim', '0', '-5', '10,-1'])
def test_bad_respacing_is_a_config_error_naming_the_field(spec):
  with pytest.raises(ConfigError, match='config.sample.respacing'):
    diffusion.space_timesteps(1000, spec)


def test_respaced_betas_keep_alpha_bar(proc):
  spaced = diffusion.create('250')
  kept = np.array(diffusion.space_timesteps(1000, '250'))
  np.testing.assert_allclose(spaced.alphas_cumprod, proc.alphas_cumprod[kept], rtol=1e-12)
  ab = proc.alphas_cumprod[kept]
  np.testing.assert_allclose(spaced.betas, 1 - ab / np.append(1.0, ab[:-1]), rtol=1e-12)
  np.testing.assert_array_equal(spaced.timestep_map, kept)
  np.testing.assert_array_equal(spaced.model_timesteps(jnp.array([0, 249])), [0.0, 999.0])


def point_mass_model(base, c):
  """The exact ε-predictor for data that is always `c` (variance channel at -1: the posterior variance)."""
  def fn(x, t_model, y):
    ab = jnp.asarray(base.alphas_cumprod, jnp.float32)[t_model.astype(jnp.int32)].reshape(-1, 1, 1, 1)
    eps = (x - jnp.sqrt(ab) * c) / jnp.sqrt(1 - ab)
    return jnp.concatenate([eps, -jnp.ones_like(eps)], -1)
  return fn


@pytest.mark.parametrize('method,respacing,eta', [('ddpm', '', 0.0), ('ddpm', '25', 0.0), ('ddim', 'ddim10', 0.0),
                                                  ('ddim', 'ddim10', 1.0)])
def test_samplers_recover_a_point_mass(proc, method, respacing, eta):
  spaced = diffusion.create(respacing)
  fn = jax.jit(lambda noise, rng: samplers.sample(point_mass_model(proc, 0.3), spaced, noise, jnp.zeros(3, int), rng,
                                                  method, eta))
  x = fn(jax.random.normal(jax.random.key(0), (3, 4, 4, 1)), jax.random.key(1))
  np.testing.assert_allclose(x, 0.3, atol=1e-4)


def test_ddpm_sampler_noise_follows_rng():
  proc = diffusion.create('10')
  model = lambda x, t, y: jnp.concatenate([0.1 * x, jnp.zeros_like(x)], -1)
  noise = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
  a = samplers.sample(model, proc, noise, jnp.zeros(2, int), jax.random.key(1))
  b = samplers.sample(model, proc, noise, jnp.zeros(2, int), jax.random.key(1))
  c = samplers.sample(model, proc, noise, jnp.zeros(2, int), jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_guidance_formula():
  # A toy model whose output depends on the label; the null label is 10.
  def model(x, t, y):
    base = x + t[:, None, None, None] / 1000
    scale = (y[:, None, None, None] + 1.0)
    return jnp.concatenate([base * scale, base * 2 * scale], -1)

  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4))
  t, y = jnp.array([5.0, 500.0]), jnp.array([3, 7])
  cond, uncond = model(x, t, y), model(x, t, jnp.full_like(y, 10))
  for channels, k in ((None, 4), (3, 3)):
    got = samplers.guided(model, 4.0, 10, channels)(x, t, y)
    np.testing.assert_allclose(got[..., :k], uncond[..., :k] + 4.0 * (cond[..., :k] - uncond[..., :k]), rtol=1e-5)
    np.testing.assert_allclose(got[..., k:], cond[..., k:], rtol=1e-6)
  np.testing.assert_allclose(samplers.guided(model, 1.0, 10)(x, t, y), cond, rtol=1e-5)


def test_ema_update():
  ema = {'w': jnp.array([1.0, 2.0])}
  params = {'w': jnp.array([3.0, 6.0])}
  np.testing.assert_allclose(ema_update(ema, params, 0.9)['w'], [1.2, 2.4], rtol=1e-6)


def test_to_uint8_matches_official_rounding():
  np.testing.assert_array_equal(samplers.to_uint8(np.array([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0])),
                                [0, 0, 128, 255, 255, 255])


def test_bad_input():
  with pytest.raises(ConfigError):
    gaussian.GaussianDiffusion(gaussian.linear_betas(10), 'learned')
  with pytest.raises(ConfigError):
    samplers.sample(lambda x, t, y: x, diffusion.create('5'), jnp.zeros((1, 2, 2, 1)), jnp.zeros(1, int),
                    jax.random.key(0), method='euler')
