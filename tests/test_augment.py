"""ImageNet augmentation ops: shapes, determinism, statistics, and RandAugment's photometric ops against PIL (the
library timm's RandAugment calls)."""
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from vision_models import data
from vision_models.data import augment, preprocess
from vision_models.errors import ConfigError

RNG = np.random.default_rng(0)
# A smooth image (upsampled noise) so interpolation differences stay small.
IMAGE = np.asarray(Image.fromarray(RNG.integers(0, 256, (12, 16, 3), np.uint8)).resize((64, 48), Image.BICUBIC))


def run(spec: str, image=IMAGE, seed=0):
  return preprocess.parse(spec)({'image': tf.constant(image)}, tf.constant([seed, 7], tf.int64))['image'].numpy()


@pytest.mark.parametrize('spec,shape,dtype', [
    ('random_resized_crop(32)', (32, 32, 3), np.uint8),
    ('random_resized_crop((24, 40), method="bilinear")', (24, 40, 3), np.uint8),
    ('randaugment()', (48, 64, 3), np.uint8),
    ('randaugment(3, 15, 1e400)', (48, 64, 3), np.uint8),  # magnitude_std inf: uniform magnitudes
    ('resize_center_crop(32)', (32, 32, 3), np.uint8),
    ('normalize|random_erasing(1.0)', (48, 64, 3), np.float32),
    ('value_range(0, 1)|random_erasing(1.0, mode="rand")', (48, 64, 3), np.float32),
])
def test_ops_shape_dtype_range_and_determinism(spec, shape, dtype):
  outs = [run(spec, seed=s) for s in range(6)]
  assert outs[0].shape == shape and outs[0].dtype == dtype
  np.testing.assert_array_equal(run(spec, seed=0), outs[0])
  if 'resize_center_crop' in spec:
    assert all(np.array_equal(o, outs[0]) for o in outs)  # Evaluation: no randomness.
  else:
    assert not all(np.array_equal(o, outs[0]) for o in outs[1:])
  assert np.isfinite(outs[0]).all()


def _pil_reference(name, image, level, sign):
  pil = Image.fromarray(image)
  factor = max(0.1, 1 + sign * level * 0.9)
  return np.asarray({
      'AutoContrast': lambda: ImageOps.autocontrast(pil),
      'Equalize': lambda: ImageOps.equalize(pil),
      'Invert': lambda: ImageOps.invert(pil),
      'Posterize': lambda: ImageOps.posterize(pil, 4 - int(level * 4)),
      'Solarize': lambda: ImageOps.solarize(pil, 256 - min(256, int(level * 256))),
      'SolarizeAdd': lambda: pil.point([min(255, i + min(128, int(level * 110))) if i < 128 else i
                                        for i in range(256)] * 3),
      'Color': lambda: ImageEnhance.Color(pil).enhance(factor),
      'Contrast': lambda: ImageEnhance.Contrast(pil).enhance(factor),
      'Brightness': lambda: ImageEnhance.Brightness(pil).enhance(factor),
      'Sharpness': lambda: ImageEnhance.Sharpness(pil).enhance(factor),
  }[name]()).astype(np.float32)


def _pil_affine(name, image, level, sign):
  pil, fill = Image.fromarray(image), (124, 116, 104)
  h, w = image.shape[:2]
  shear, shift = sign * level * 0.3, sign * level * 0.45
  coeffs = {'ShearX': (1, shear, 0, 0, 1, 0), 'ShearY': (1, 0, 0, shear, 1, 0),
            'TranslateX': (1, 0, shift * w, 0, 1, 0), 'TranslateY': (1, 0, 0, 0, 1, shift * h)}
  if name == 'Rotate':
    out = pil.rotate(sign * level * 30, resample=Image.BILINEAR, fillcolor=fill)
  else:
    out = pil.transform(pil.size, Image.AFFINE, coeffs[name], resample=Image.BILINEAR, fillcolor=fill)
  return np.asarray(out).astype(np.float32)


PHOTOMETRIC = ['AutoContrast', 'Equalize', 'Invert', 'Posterize', 'Solarize', 'SolarizeAdd', 'Color', 'Contrast',
               'Brightness', 'Sharpness']
GEOMETRIC = ['Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY']


@pytest.mark.parametrize('level,sign', [(0.35, 1.0), (0.9, -1.0)])
def test_randaugment_ops_match_pil(level, sign):
  ops = augment.randaugment_ops(increasing=True)
  assert sorted(ops) == sorted(PHOTOMETRIC + GEOMETRIC)
  x = tf.constant(IMAGE, tf.float32)
  for name in PHOTOMETRIC:  # The same integer arithmetic as PIL.
    ours = np.clip(np.round(ops[name](x, tf.constant(level), tf.constant(sign)).numpy()), 0, 255)
    diff = np.abs(ours - _pil_reference(name, IMAGE, level, sign))
    # Blends truncate `factor · x`; PIL's factor comes from a double, ours from float32: rare off-by-ones.
    assert diff.max() <= (1 if name in ('Color', 'Contrast', 'Brightness', 'Sharpness') else 0), name
    assert (diff > 0).mean() < 0.005, name
  for name in GEOMETRIC:  # Bilinear resampling differs from PIL's only in rounding and at the filled border.
    ours = np.clip(np.round(ops[name](x, tf.constant(level), tf.constant(sign)).numpy()), 0, 255)
    diff = np.abs(ours - _pil_affine(name, IMAGE, level, sign))
    assert diff.mean() < 1.5 and np.median(diff) <= 1, name


def test_randaugment_magnitude_zero_is_identity_for_geometric_ops():
  spec = f'randaugment(2, 0, 0, prob=1.0, ops={tuple(GEOMETRIC)})'
  for seed in range(4):
    np.testing.assert_allclose(run(spec, seed=seed), IMAGE, atol=1)


def test_random_resized_crop_area_and_aspect_statistics():
  h, w = 120, 160
  coords = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing='ij'), -1).astype(np.float32)
  op = preprocess.parse('random_resized_crop(64, method="nearest")')
  crops = tf.data.Dataset.range(200).map(
      lambda s: op({'image': tf.constant(coords)}, tf.stack([s, tf.constant(1, tf.int64)]))['image'])
  out = next(iter(crops.batch(200))).numpy()
  rows = out[..., 0].max((1, 2)) - out[..., 0].min((1, 2)) + 1
  cols = out[..., 1].max((1, 2)) - out[..., 1].min((1, 2)) + 1
  areas, aspects = rows * cols / (h * w), cols / rows
  # Nearest sampling sees all but at most one row/column of the box; scale U(0.08, 1) has mean 0.54 before rejection.
  assert areas.min() > 0.06 and areas.max() <= 1.0
  assert 0.4 < areas.mean() < 0.6
  assert np.all(aspects > 0.7) and np.all(aspects < 1.45)


def test_resize_center_crop_matches_pil_eval_transform():
  image = np.asarray(Image.fromarray(IMAGE).resize((150, 100), Image.BICUBIC))  # h 100, w 150
  ours = run('resize_center_crop(56, crop_pct=0.875)', image).astype(np.float32)
  short = math.floor(56 / 0.875)  # 64: the image becomes 64 × 96, cropped at top 4, left 20
  ref = np.asarray(Image.fromarray(image).resize((96, short), Image.BICUBIC)).astype(np.float32)[4:60, 20:76]
  assert ours.shape == (56, 56, 3)
  assert np.abs(ours - ref).mean() < 1.5


def test_random_erasing_box_area_and_modes():
  x = np.zeros((40, 50, 3), np.float32)
  fractions = [(run('random_erasing(1.0)', x, seed=s) != 0).any(-1).mean() for s in range(30)]
  assert min(fractions) >= 0.015 and max(fractions) <= 1 / 3 + 0.01
  np.testing.assert_array_equal(run('random_erasing(0.0)', x + 1, seed=3), x + 1)
  const = run('random_erasing(1.0, mode="const")', x + 1, seed=3)
  assert 0 < (const == 0).all(-1).mean() <= 1 / 3 + 0.01
  rand = run('random_erasing(1.0, mode="rand")', x, seed=3)
  box = rand[(rand != 0).any(-1)]
  assert len(box) and np.all(box == box[0])  # One colour per box.


def test_imagenet_train_spec_composes_on_jpeg_bytes():
  jpeg = tf.io.encode_jpeg(tf.constant(IMAGE))
  spec = ('decode|random_resized_crop(32)|flip_lr|randaugment(2, 9, 0.5)|normalize|random_erasing(0.25)'
          '|keep("image", "label")')
  out = preprocess.parse(spec)({'image': jpeg, 'label': tf.constant(3)}, tf.constant([0, 1], tf.int64))
  assert out['image'].shape == (32, 32, 3) and out['image'].dtype == tf.float32 and int(out['label']) == 3


@pytest.mark.parametrize('crop', ['random_resized_crop(32)', 'inception_crop(32)'])
def test_crops_decode_only_their_window_of_jpeg_bytes(crop):
  # The crop on JPEG bytes (decode_and_crop_jpeg) against decode-then-crop with the same seed: the same window,
  # the same pixels inside it; chroma upsampling may differ at the window's edges. PNG bytes decode whole.
  big = np.asarray(Image.fromarray(IMAGE).resize((320, 240), Image.BICUBIC))
  jpeg = tf.io.encode_jpeg(tf.constant(big), quality=95)
  for seed in range(4):
    fused = run(crop, jpeg, seed).astype(int)
    whole = preprocess.parse(crop)({'image': tf.io.decode_jpeg(jpeg)}, tf.constant([seed, 7], tf.int64))['image']
    diff = np.abs(fused - whole.numpy().astype(int))
    assert fused.shape == (32, 32, 3) and diff.mean() < 0.5 and diff[2:-2, 2:-2].max() <= 2
  png = tf.io.encode_png(tf.constant(IMAGE))
  np.testing.assert_array_equal(run(crop, png), run(crop, IMAGE))


@pytest.mark.parametrize('spec,match', [
    ('decode|randaugmnt(2, 9)', "unknown preprocessing op 'randaugmnt'"),
    ('randaugment(ops=("Rotate", "Blur"))', r"randaugment: unknown ops \['Blur'\]"),
    ('random_erasing(mode="noise")', 'unknown mode'),
    ('resize_center_crop(224, crop_pct=1.5)', r'crop_pct=1.5 must be in \(0, 1\]'),
])
def test_bad_specs_are_config_errors(spec, match):
  with pytest.raises(ConfigError, match=match):
    preprocess.parse(spec)


def test_ops_in_the_wrong_place_are_config_errors():
  with pytest.raises(ConfigError, match='randaugment works on uint8 RGB images'):
    run('value_range(0, 1)|randaugment()')
  with pytest.raises(ConfigError, match='random_erasing works on float images'):
    run('random_erasing()')


def test_repeated_augmentation_yields_k_differently_augmented_copies(digits_dir):
  pp = 'decode(1)|resize(16)|random_shift(3)|value_range(-1, 1)|keep("image", "label")'
  batch = next(data.TrainBatches('sklearn_digits', 'train', digits_dir, pp, 24, seed=0, shuffle_buffer=100,
                                  repeated_aug=3))
  labels, images = batch['label'].reshape(8, 3), batch['image'].reshape(8, 3, -1)
  assert np.all(labels == labels[:, :1])
  assert sum(not np.array_equal(g[0], g[1]) for g in images) >= 6
  with pytest.raises(ConfigError, match='repeated_aug=0'):
    next(data.TrainBatches('sklearn_digits', 'train', digits_dir, pp, 24, seed=0, repeated_aug=0))
  with pytest.raises(ConfigError, match="leaves the image encoded: start it with 'decode'"):
    next(data.TrainBatches('sklearn_digits', 'train', digits_dir, 'keep("image", "label")', 24, seed=0))
  with pytest.raises(ConfigError, match='randaugment works on uint8 RGB images'):  # Raised while tf.data traces.
    next(data.TrainBatches('sklearn_digits', 'train', digits_dir, 'decode(1)|randaugment', 24, seed=0))
