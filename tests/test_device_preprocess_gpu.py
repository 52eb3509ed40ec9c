"""The device augmentation compiled for a real GPU (skipped elsewhere; `test_device_preprocess.py` checks the ops
against the host's on the CPU): with the same key the GPU gives the CPU's images, up to float rounding at a grey level's
edge. TF-free, so it runs on a GPU machine without TensorFlow. First run on an H100 (2026-11-23) found AutoContrast one
grey level dark on every pixel of full-range images (XLA:GPU divides through a reciprocal)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_models.training import device_preprocess as dp

pytestmark = pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs a GPU')

SPECS = [
    'randaugment(2, 15, magnitude_std=0, magnitude_max=15, increasing=False, fill=(128, 128, 128))|flip_lr',
    'randaugment(2, 9)|flip_lr',
    'randaugment(1, 9, prob=1.0, ops=("AutoContrast",))',
    'randaugment(1, 9, prob=1.0, ops=("Equalize",))',
    'randaugment(1, 9, prob=1.0, ops=("Rotate", "ShearX", "TranslateY"))',
]


@pytest.mark.parametrize('spec', SPECS)
def test_gpu_gives_the_cpu_images(spec):
  # Not full range: AutoContrast then changes the images (it is the identity on full-range ones).
  images = np.random.default_rng(0).integers(20, 230, (32, 64, 64, 3)).astype(np.uint8)
  op, key = jax.jit(dp.parse(spec)), jax.random.key(0)
  gpu = np.asarray(op(jnp.asarray(images), key)).astype(int)
  with jax.default_device(jax.devices('cpu')[0]):
    cpu = np.asarray(op(jnp.asarray(images), key)).astype(int)
  diff = np.abs(gpu - cpu)
  assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
  assert (gpu != images).any()
