"""Augmentation on the accelerator (`config.data.pp_device`): every RandAugment op against the host (TF) op of the same
name, the draws' statistics, erasing, flips, the config checks, and a short training run that augments in its step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from vision_models.data import augment, preprocess
from vision_models.errors import ConfigError
from vision_models.training import device_preprocess as dp, metrics as metrics_lib, trainer


def _image(seed=0, shape=(37, 45, 3)):
  return np.random.default_rng(seed).integers(0, 256, shape).astype(np.float32)


@pytest.mark.parametrize('increasing,fill', [(True, (124, 116, 104)), (False, (128, 128, 128))])
def test_each_randaugment_op_matches_the_host_op(increasing, fill):
  host, device = augment.randaugment_ops(increasing, fill), dp.randaugment_ops(increasing, fill)
  assert list(host) == list(device)
  image = _image()
  for name in host:
    run = jax.jit(device[name])
    for level in (0.0, 0.37, 0.9, 1.5):
      for sign in (1.0, -1.0):
        want = np.clip(np.round(host[name](tf.constant(image), tf.constant(level), tf.constant(sign)).numpy()), 0, 255)
        got = np.clip(np.round(np.asarray(run(jnp.asarray(image), jnp.float32(level), jnp.float32(sign)))), 0, 255)
        diff = np.abs(want - got)
        # Both compute PIL's integer arithmetic in float32: a floor can land on either side of an integer.
        assert diff.max() <= 1 and (diff > 0).mean() < 0.1, (name, level, sign, diff.max(), (diff > 0).mean())
        if level == 0.9 and name not in ('Invert', 'AutoContrast', 'Equalize'):  # The level is used.
          assert np.abs(got - image).max() > 0, name


def test_randaugment_draws_per_example():
  images = jnp.asarray(np.stack([_image(i, (24, 24, 3)) for i in range(64)]).astype(np.uint8))
  key = jax.random.key(0)
  out = jax.jit(dp.parse('randaugment(2, 9)'))(images, key)
  assert out.dtype == jnp.uint8 and out.shape == images.shape
  changed = np.asarray((out != images).any((1, 2, 3)))
  # Each of two layers applies an op with probability 0.5: 75% of images change (fewer: some ops are no-ops here).
  assert 0.45 < changed.mean() < 0.95, changed.mean()
  assert not np.array_equal(out, jax.jit(dp.parse('randaugment(2, 9)'))(images, jax.random.key(1)))
  np.testing.assert_array_equal(jax.jit(dp.parse('randaugment(2, 9, prob=0.0)'))(images, key), images)
  inverted = jax.jit(dp.parse('randaugment(1, 9, prob=1.0, ops=("Invert",))'))(images, key)
  np.testing.assert_array_equal(inverted, 255 - images)


def test_flip_value_range_normalize():
  images = jnp.asarray(np.stack([_image(i, (8, 8, 3)) for i in range(200)]).astype(np.uint8))
  flipped = np.asarray(dp.parse('flip_lr')(images, jax.random.key(0)))
  is_flipped = (flipped == np.asarray(images)[:, :, ::-1]).all((1, 2, 3))
  assert ((flipped == np.asarray(images)).all((1, 2, 3)) | is_flipped).all() and 0.35 < is_flipped.mean() < 0.65
  scaled = dp.parse('value_range(-1, 1)')(images, jax.random.key(0))
  assert scaled.dtype == jnp.float32 and float(scaled.min()) >= -1 and float(scaled.max()) <= 1
  np.testing.assert_allclose(dp.parse('normalize')(images, jax.random.key(0)),
                             (np.asarray(images) / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], atol=1e-6)


def test_random_erasing_fills_one_box_with_noise():
  images = jnp.full((400, 32, 32, 3), 5.0)
  out = np.asarray(jax.jit(dp.parse('random_erasing(0.25)'))(images, jax.random.key(0)))
  erased = (out != 5.0).any(-1)
  fraction = erased.any((1, 2)).mean()
  assert 0.18 < fraction < 0.32, fraction
  for mask in erased[erased.any((1, 2))][:20]:  # One axis-aligned box of 2%-33% of the image.
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
    assert 0.015 <= mask.mean() <= 0.34
  noise = out[erased]
  assert abs(noise.mean()) < 0.2 and 0.8 < noise.std() < 1.2


@pytest.mark.parametrize('spec,match', [
    ('randaugment(2, 9)|flip_lr', 'leaves the images uint8: end it with value_range or normalize'),
    ('value_range|randaugment(2, 9)', 'device randaugment works on uint8 RGB images'),
    ('random_erasing(0.25)|value_range', 'random_erasing works on float images'),
    ('blur(3)', "unknown device preprocessing op 'blur'"),
    ('randaugment(ops=("Blur",))', "unknown ops \\['Blur'\\]"),
])
def test_bad_specs_are_config_errors(spec, match):
  with pytest.raises(ConfigError, match=match):
    dp.check(spec, (16, 16, 3))


def test_check_takes_the_host_output_dtype():
  assert preprocess.image_dtype('inception_crop(16)|keep("image", "label")') == 'uint8'
  assert preprocess.image_dtype('decode|resize(16)|normalize|keep("image", "label")') == 'float32'
  assert dp.check('flip_lr|random_erasing(0.25)', (16, 16, 3), 'float32').dtype == jnp.float32


@pytest.mark.xdist_group('training')
def test_training_augments_on_the_device(tiny_config, tmp_path):
  tiny_config.total_steps = 10
  tiny_config.eval_every = 10
  tiny_config.data.channels = 3
  tiny_config.data.pp_train = 'decode(3)|resize(16)|keep("image", "label")'  # uint8 to the device
  tiny_config.data.pp_eval = 'decode(3)|resize(16)|value_range(-1, 1)|keep("image", "label")'
  tiny_config.data.pp_device = 'randaugment(2, 9)|flip_lr|value_range(-1, 1)'
  task = trainer.Task(tiny_config)
  batch = next(task.batches(0))
  assert batch['image'].dtype == np.uint8
  (augmented,) = task.model_inputs(batch, jax.random.key(0))
  assert augmented.dtype == jnp.float32 and float(jnp.abs(augmented).max()) <= 1
  results = trainer.train(tiny_config, str(tmp_path))
  losses = [r['train/loss'] for r in metrics_lib.read(str(tmp_path)) if 'train/loss' in r]
  assert losses and all(np.isfinite(losses)) and 0 <= results['eval/accuracy'] <= 1

  tiny_config.data.pp_device = 'randaugment(2, 9)'  # Leaves uint8: refused before anything compiles.
  with pytest.raises(ConfigError, match='pp_device'):
    trainer.train(tiny_config, str(tmp_path / 'bad'))
  tiny_config.data.pp_train = tiny_config.data.pp_eval  # Float from the host: erasing on the device fits.
  tiny_config.data.pp_device = 'flip_lr|random_erasing(0.25)'
  trainer.Task(tiny_config)


def test_diffusion_refuses_device_preprocessing(digits_dir):
  from configs import dit_digits
  from vision_models.diffusion import trainer as diffusion_trainer
  config = dit_digits.get_config()
  config.data.data_dir = digits_dir
  config.data.pp_device = 'flip_lr'
  with pytest.raises(ConfigError, match='pp_device is for classification'):
    diffusion_trainer.build(config)
