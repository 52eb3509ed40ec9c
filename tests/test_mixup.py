"""Mixup / CutMix: label mass, λ against the pasted area, identities, per-group mixing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_models.training.mixup import mixup_cutmix

BATCH, CLASSES = 8, 10
_jitted = jax.jit(mixup_cutmix, static_argnames='groups')


def mix(seed, images, labels, mixup_alpha, cutmix_alpha, switch_prob=0.5, smoothing=0.0, prob=1.0, groups=1):
  """One compilation per `groups` serves every test: the other arguments are traced, always passed the same way."""
  return _jitted(jax.random.key(seed), images, labels, float(mixup_alpha), float(cutmix_alpha), float(switch_prob),
                 float(smoothing), prob=float(prob), groups=groups)


def constant_batch():
  """Example i is the constant image i + 1 with label i, so every output pixel says which example it came from."""
  images = jnp.broadcast_to(jnp.arange(1, BATCH + 1, dtype=jnp.float32)[:, None, None, None], (BATCH, 16, 20, 3))
  return images, jax.nn.one_hot(jnp.arange(BATCH), CLASSES)


@pytest.mark.parametrize('mixup_alpha,cutmix_alpha,smoothing', [(0.8, 1.0, 0.1), (0.2, 0.0, 0.0), (0.0, 1.0, 0.3)])
def test_label_mass_is_conserved(mixup_alpha, cutmix_alpha, smoothing):
  images, labels = constant_batch()
  for seed in range(5):
    out, targets = mix(seed, images, labels, mixup_alpha, cutmix_alpha, 0.5, smoothing)
    assert out.shape == images.shape and out.dtype == images.dtype and targets.shape == (BATCH, CLASSES)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    assert targets.min() >= smoothing / CLASSES - 1e-7


def test_cutmix_lambda_is_the_kept_area():
  images, labels = constant_batch()
  lams = []
  for seed in range(20):
    out, targets = mix(seed, images, labels, 0.0, 1.0, 0.5, 0.0)
    for i in range(BATCH):
      mirror = BATCH - 1 - i
      from_mirror = float((out[i] == mirror + 1).mean())
      assert bool(jnp.all((out[i] == i + 1) | (out[i] == mirror + 1)))  # Pasted, not blended.
      np.testing.assert_allclose(targets[i, mirror], from_mirror, atol=1e-6)
      np.testing.assert_allclose(targets[i, i], 1.0 - from_mirror, atol=1e-6)
    lams.append(float(targets[0, 0]))
  assert any(0.05 < lam < 0.95 for lam in lams)


def test_mixup_blends_with_the_target_lambda():
  images, labels = constant_batch()
  out, targets = mix(3, images, labels, 0.8, 0.0, 0.5, 0.0)
  lam = targets[:, jnp.arange(BATCH)][jnp.arange(BATCH), jnp.arange(BATCH)]
  expected = lam[:, None, None, None] * images + (1 - lam[:, None, None, None]) * images[::-1]
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  assert np.unique(np.asarray(lam)).size == 1 and 0 < float(lam[0]) < 1  # One λ per batch.


def test_alpha_zero_or_prob_zero_is_identity_with_smoothed_labels():
  images, labels = constant_batch()
  for mixup_alpha, cutmix_alpha, prob in ((0.0, 0.0, 1.0), (0.8, 1.0, 0.0)):
    out, targets = mix(0, images, labels, mixup_alpha, cutmix_alpha, 0.5, 0.1, prob)
    np.testing.assert_array_equal(out, images)
    np.testing.assert_allclose(targets, labels * 0.9 + 0.01, rtol=1e-6)


def test_switch_prob_and_lambda_distribution():
  images, labels = constant_batch()
  pasted, lams = [], []
  for seed in range(100):
    out, _ = mix(seed, images, labels, 0.8, 1.0, 0.5, 0.0)
    pasted.append(bool(jnp.all((out[0] == 1) | (out[0] == BATCH))))
    lams.append(float(mix(seed, images, labels, 0.8, 0.0, 0.5, 0.0)[1][0, 0]))
  assert 0.35 < np.mean(pasted) < 0.65  # switch_prob 0.5
  assert 0.4 < np.mean(lams) < 0.6  # Beta(α, α) is symmetric about 1/2 (CutMix's clipped boxes bias its λ up).


def test_groups_mix_within_contiguous_slices():
  images, labels = constant_batch()
  half = BATCH // 2
  out, targets = mix(1, images, labels, 0.8, 0.0, 0.5, 0.0, groups=2)
  for i in range(BATCH):
    group, j = divmod(i, half)
    partner = group * half + half - 1 - j
    assert set(np.flatnonzero(np.asarray(targets[i]) > 1e-6)) == {i, partner}
  assert float(targets[0, 0]) != float(targets[half, half])  # Each group draws its own λ.
  again, _ = mix(1, images, labels, 0.8, 0.0, 0.5, 0.0, groups=2)
  np.testing.assert_array_equal(again, out)
  with pytest.raises(ValueError, match='not divisible by groups=3'):
    mixup_cutmix(jax.random.key(1), images, labels, groups=3)
