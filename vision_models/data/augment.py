"""ImageNet training and evaluation ops with timm's semantics, written on TF image ops and registered by name:
`random_resized_crop`, `randaugment`, `random_erasing`, `resize_center_crop`.

Every random draw is a stateless op keyed by the per-example seed the pipeline passes, so the output is a function of
the data seed alone. Ops that take uint8 images return uint8 (rounded like PIL's quantised results).
"""
import math
from typing import Callable

import tensorflow as tf

from vision_models.data import preprocess
from vision_models.errors import ConfigError

_ATTEMPTS = 10  # Boxes drawn before a fallback, as in torchvision's crop and timm's erasing.
_LEVEL_DENOM = 10.0  # RandAugment magnitude M corresponds to level M / 10 of each op's range.


def _image_op(fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> preprocess.Op:
  def op(example, seed):
    return {**example, 'image': fn(example['image'], seed)}
  return op


def _seeds(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
  return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _resize(image: tf.Tensor, hw, method: str) -> tf.Tensor:
  out = tf.image.resize(image, hw, method=method, antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8) if image.dtype == tf.uint8 else out


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
  return (size, size) if isinstance(size, int) else tuple(size)


def _first_fitting_box(seed, height, width, area_range, log_ratio_range, fits_fn):
  """(h, w, found) of the first of `_ATTEMPTS` boxes with area U(area_range)·H·W and log-uniform aspect w/h."""
  s_area, s_ratio = _seeds(seed, 2)
  hf, wf = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  area = tf.random.stateless_uniform([_ATTEMPTS], s_area, *area_range) * hf * wf
  aspect = tf.exp(tf.random.stateless_uniform([_ATTEMPTS], s_ratio, *log_ratio_range))
  box_w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  box_h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  fits = fits_fn(box_h, box_w)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  return box_h[first], box_w[first], tf.reduce_any(fits)


def _randint(seed, high):
  """Uniform integer in [0, high] (0 when high < 0: the caller then discards it)."""
  return tf.random.stateless_uniform([], seed, 0, tf.maximum(high, 0) + 1, dtype=tf.int32)


@preprocess.register('random_resized_crop')
def random_resized_crop(size: int | tuple[int, int], scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), method: str = 'bicubic') -> preprocess.Op:
  """torchvision/timm RandomResizedCrop: up to 10 draws of area U(scale)·HW and log-uniform aspect ratio; the first
  that fits is cropped at a uniform offset, else a central crop clamped to `ratio`; then resized to `size`.
  Takes decoded images or encoded bytes (no `decode` before it: a JPEG then decodes only the crop)."""
  out_hw = _hw(size)
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

  def box(seed, h, w):
    s_box, s_top, s_left = _seeds(seed, 3)
    box_h, box_w, found = _first_fitting_box(
        s_box, h, w, scale, log_ratio, lambda bh, bw: (bw <= w) & (bh <= h) & (bw > 0) & (bh > 0))
    in_ratio = tf.cast(w, tf.float32) / tf.cast(h, tf.float32)
    round_int = lambda x: tf.cast(tf.round(x), tf.int32)
    fall_w = tf.where(in_ratio > ratio[1], round_int(tf.cast(h, tf.float32) * ratio[1]), w)
    fall_h = tf.where(in_ratio < ratio[0], round_int(tf.cast(w, tf.float32) / ratio[0]), h)
    box_h, box_w = tf.where(found, box_h, fall_h), tf.where(found, box_w, fall_w)
    top = tf.where(found, _randint(s_top, h - box_h), (h - box_h) // 2)
    left = tf.where(found, _randint(s_left, w - box_w), (w - box_w) // 2)
    return top, left, box_h, box_w

  return _image_op(lambda image, seed: _resize(preprocess.crop_window(image, lambda h, w: box(seed, h, w)), out_hw, method))


@preprocess.register('resize_center_crop')
def resize_center_crop(size: int, crop_pct: float = 0.875, method: str = 'bicubic') -> preprocess.Op:
  """timm's evaluation transform: shorter side to floor(size / crop_pct), then the central size×size crop."""
  if not 0 < crop_pct <= 1:
    raise ConfigError(f'resize_center_crop: crop_pct={crop_pct} must be in (0, 1]')
  short = math.floor(size / crop_pct)

  def fn(image, seed):
    hw = tf.cast(tf.shape(image)[:2], tf.float64)
    # torchvision keeps the aspect ratio and truncates the longer side.
    new_hw = tf.cast(tf.floor(hw * short / tf.reduce_min(hw)), tf.int32)
    out = _resize(image, new_hw, method)
    top, left = tf.unstack(tf.cast(tf.round(tf.cast(new_hw - size, tf.float64) / 2), tf.int32))
    return out[top:top + size, left:left + size]
  return _image_op(fn)


@preprocess.register('random_erasing')
def random_erasing(probability: float = 0.25, mode: str = 'pixel', min_area: float = 0.02, max_area: float = 1 / 3,
                   min_aspect: float = 0.3, max_aspect: float | None = None) -> preprocess.Op:
  """timm RandomErasing on a normalised float image: with `probability`, one box of U(min_area, max_area) of the image
  and log-uniform aspect ratio is filled with N(0, 1) noise per pixel ('pixel'), per channel ('rand') or zeros
  ('const')."""
  if mode not in ('pixel', 'rand', 'const'):
    raise ConfigError(f"random_erasing: unknown mode {mode!r}; choose 'pixel', 'rand' or 'const'")
  log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))

  def fn(image, seed):
    if image.dtype == tf.uint8:
      raise ConfigError('random_erasing works on float images: put it after normalize or value_range')
    s_apply, s_box, s_top, s_left, s_fill = _seeds(seed, 5)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    box_h, box_w, found = _first_fitting_box(s_box, h, w, (min_area, max_area), log_aspect,
                                             lambda bh, bw: (bw < w) & (bh < h))

    def erase():  # Noise only for the box, only when erasing: drawing it for the whole image costs more than the rest.
      top, left = _randint(s_top, h - box_h), _randint(s_left, w - box_w)
      channels = tf.shape(image)[2]
      fill_shape = {'pixel': [box_h, box_w, channels], 'rand': [1, 1, channels], 'const': [1, 1, 1]}[mode]
      fill = tf.random.stateless_normal(fill_shape, s_fill) if mode != 'const' else tf.zeros(fill_shape)
      fill = tf.broadcast_to(tf.cast(fill, image.dtype), [box_h, box_w, channels])
      return tf.tensor_scatter_nd_update(image, _box_indices(top, left, box_h, box_w), fill)

    apply = found & (tf.random.stateless_uniform([], s_apply) < probability)
    return tf.cond(apply, erase, lambda: image)
  return _image_op(fn)


def _box_indices(top, left, height, width):
  """[height, width, 2] (row, column) indices of a box."""
  rows, cols = tf.meshgrid(tf.range(top, top + height), tf.range(left, left + width), indexing='ij')
  return tf.stack([rows, cols], -1)


# RandAugment ops on float32 images in [0, 255]: `fn(image, level, sign)` with level = magnitude / 10 ≥ 0 and a random
# sign ±1 for the ops whose direction is random. Ranges follow timm's `rand-...-inc1` set.

def _gray(image):
  """PIL's 'L' conversion in its 16-bit fixed point (exact in float32)."""
  weighted = tf.tensordot(image, tf.constant([19595.0, 38470.0, 7471.0]), 1)[..., None]
  return tf.floor((weighted + 32768.0) / 65536.0)


def _blend(degenerate, image, factor):
  return tf.floor(tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0))  # PIL truncates.


def _enhance_factor(increasing):
  if increasing:  # 1 = unchanged; the level moves the factor away from 1 in a random direction.
    return lambda level, sign: tf.maximum(0.1, 1.0 + sign * level * 0.9)
  return lambda level, sign: level * 1.8 + 0.1


def _autocontrast(image, level, sign):
  channels_first = tf.transpose(tf.reshape(image, [-1, image.shape[-1]]))  # Reduces along rows: 2x faster.
  lo, hi = tf.reduce_min(channels_first, 1), tf.reduce_max(channels_first, 1)
  stretched = tf.floor((image - lo) * 255.0 / tf.maximum(hi - lo, 1.0))
  return tf.where(hi > lo, stretched, image)


def _equalize(image, level, sign):
  """PIL's per-channel histogram equalisation: lut[i] = (cumcount_before(i) + step // 2) // step."""
  channels = image.shape[-1]
  # Channel c's values index bins 256·c ... 256·c + 255 of one histogram, one lookup table.
  values = tf.cast(tf.reshape(image, [-1, channels]), tf.int32) + tf.range(channels) * 256  # [H·W, C]
  hist = tf.reshape(tf.math.bincount(values, minlength=256 * channels, maxlength=256 * channels), [channels, 256])
  last_bin = 255 - tf.argmax(tf.cast(tf.reverse(hist, [1]) > 0, tf.int32), axis=1, output_type=tf.int32)
  last = tf.gather(hist, last_bin, batch_dims=1)
  step = (tf.reduce_sum(hist, 1) - last) // 255
  lut = (tf.cumsum(hist, axis=1, exclusive=True) + step[:, None] // 2) // tf.maximum(step, 1)[:, None]
  lut = tf.where(step[:, None] > 0, tf.minimum(lut, 255), tf.range(256)[None])
  return tf.reshape(tf.cast(tf.gather(tf.reshape(lut, [-1]), values), tf.float32), tf.shape(image))


def _posterize(increasing):
  def fn(image, level, sign):
    bits = tf.cast(level * 4, tf.int32)
    bits = tf.clip_by_value(4 - bits if increasing else bits, 0, 8)
    quantum = tf.cast(2 ** (8 - bits), tf.float32)
    return tf.floor(image / quantum) * quantum
  return fn


def _solarize(increasing):
  def fn(image, level, sign):
    threshold = tf.minimum(256.0, tf.floor(level * 256))
    threshold = 256.0 - threshold if increasing else threshold
    # Arithmetic instead of a select against a broadcast scalar: 4x faster, the same integers.
    return image + tf.cast(image >= threshold, tf.float32) * (255.0 - 2.0 * image)
  return fn


def _solarize_add(image, level, sign):
  add = tf.minimum(128.0, tf.floor(level * 110))
  return image + tf.cast(image < 128, tf.float32) * (tf.minimum(255.0, image + add) - image)


def _color(factor):
  return lambda image, level, sign: _blend(_gray(image), image, factor(level, sign))


def _contrast(factor):
  return lambda image, level, sign: _blend(tf.floor(tf.reduce_mean(_gray(image)) + 0.5), image, factor(level, sign))


def _brightness(factor):
  return lambda image, level, sign: _blend(0.0, image, factor(level, sign))


def _sharpness(factor):
  def fn(image, level, sign):
    # PIL's SMOOTH filter [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 as a separable box sum plus 4x the centre (exact
    # in float32), 7x faster than a depthwise convolution; PIL keeps the border.
    rows = image[:-2] + image[1:-1] + image[2:]
    smooth = tf.round((rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:] + 4.0 * image[1:-1, 1:-1]) / 13.0)
    middle = tf.concat([image[1:-1, :1], smooth, image[1:-1, -1:]], 1)
    degenerate = tf.concat([image[:1], middle, image[-1:]], 0)
    return _blend(degenerate, image, factor(level, sign))
  return fn


def _affine(image, matrix, offset, fill):
  """Output pixel p samples the input at `matrix @ p + offset` (PIL's affine convention, continuous coordinates with
  pixel centres at +0.5), bilinear, `fill` outside. The TF op takes one scalar fill, so it warps `image - fill` with
  fill 0 and adds `fill` back: the bilinear weights sum to 1, so each tap outside contributes `fill` per channel."""
  matrix = tf.convert_to_tensor(matrix, tf.float32)
  offset = tf.convert_to_tensor(offset, tf.float32) + tf.reduce_sum(matrix, 1) * 0.5 - 0.5  # to pixel indices
  transform = tf.concat([matrix[0], offset[:1], matrix[1], offset[1:], tf.zeros([2])], 0)
  fill = tf.constant(fill[:image.shape[-1]], tf.float32)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=(image - fill)[None], transforms=transform[None], output_shape=tf.shape(image)[:2], fill_value=0.0,
      interpolation='BILINEAR', fill_mode='CONSTANT')[0]
  return out + fill


def _rotate(fill):
  def fn(image, level, sign):
    angle = -sign * level * 30.0 * math.pi / 180  # PIL rotates counter-clockwise about the image centre.
    cos, sin = tf.cos(angle), tf.sin(angle)
    center = tf.cast(tf.reverse(tf.shape(image)[:2], [0]), tf.float32) / 2  # (x, y)
    matrix = tf.stack([tf.stack([cos, sin]), tf.stack([-sin, cos])])
    return _affine(image, matrix, center - tf.linalg.matvec(matrix, center), fill)
  return fn


def _shear(axis, fill):
  def fn(image, level, sign):
    f = sign * level * 0.3
    matrix = [[1.0, f], [0.0, 1.0]] if axis == 'x' else [[1.0, 0.0], [f, 1.0]]
    return _affine(image, matrix, [0.0, 0.0], fill)
  return fn


def _translate(axis, fill):
  def fn(image, level, sign):
    pixels = sign * level * 0.45 * tf.cast(tf.shape(image)[1 if axis == 'x' else 0], tf.float32)
    offset = tf.stack([pixels, 0.0] if axis == 'x' else [0.0, pixels])
    return _affine(image, tf.eye(2), offset, fill)
  return fn


def randaugment_ops(increasing: bool = True, fill: tuple[float, ...] = (124, 116, 104)) -> dict[str, Callable]:
  """timm's RandAugment op set by name (the `inc1` variants when `increasing`); TranslateX/Y are timm's relative
  TranslateXRel/YRel (up to 45% of the side at level 1)."""
  factor = _enhance_factor(increasing)
  return {
      'AutoContrast': _autocontrast, 'Equalize': _equalize, 'Invert': lambda image, level, sign: 255.0 - image,
      'Rotate': _rotate(fill), 'Posterize': _posterize(increasing), 'Solarize': _solarize(increasing),
      'SolarizeAdd': _solarize_add, 'Color': _color(factor), 'Contrast': _contrast(factor),
      'Brightness': _brightness(factor), 'Sharpness': _sharpness(factor), 'ShearX': _shear('x', fill),
      'ShearY': _shear('y', fill), 'TranslateX': _translate('x', fill), 'TranslateY': _translate('y', fill),
  }


@preprocess.register('randaugment')
def randaugment(num_layers: int = 2, magnitude: float = 9, magnitude_std: float = 0.5, increasing: bool = True,
                prob: float = 0.5, magnitude_max: float = 10, ops: tuple[str, ...] | None = None,
                fill: tuple[float, ...] = (124, 116, 104)) -> preprocess.Op:
  """timm RandAugment (`rand-m9-mstd0.5-inc1` by default) on a uint8 image: `num_layers` times, an op drawn uniformly
  (with replacement) is applied with probability `prob` at magnitude N(magnitude, magnitude_std) (uniform in
  [0, magnitude] when the std is inf) clipped to [0, magnitude_max]. Affine ops fill with `fill` (timm: the ImageNet
  mean) and interpolate bilinearly. `ops` restricts the op set by name."""
  table = randaugment_ops(increasing, fill)
  names = list(table) if ops is None else list(ops)
  unknown = sorted(set(names) - set(table))
  if unknown or not names:
    raise ConfigError(f'randaugment: unknown ops {unknown or names}; choose from {", ".join(table)}')
  fns = [table[n] for n in names]

  def layer(image, seed):
    s_op, s_apply, s_mag, s_sign = _seeds(seed, 4)
    if math.isinf(magnitude_std):
      mag = tf.random.stateless_uniform([], s_mag, 0.0, float(magnitude))
    else:
      mag = magnitude + magnitude_std * tf.random.stateless_normal([], s_mag)
    level = tf.clip_by_value(mag, 0.0, float(magnitude_max)) / _LEVEL_DENOM
    sign = tf.where(tf.random.stateless_uniform([], s_sign) < 0.5, 1.0, -1.0)
    index = tf.random.stateless_uniform([], s_op, 0, len(fns), dtype=tf.int32)
    index = tf.where(tf.random.stateless_uniform([], s_apply) < prob, index, len(fns))  # len(fns): unchanged.
    branches = [lambda f=f: tf.clip_by_value(tf.round(f(image, level, sign)), 0.0, 255.0) for f in fns]
    return tf.switch_case(index, branches + [lambda: image])

  def fn(image, seed):
    if image.dtype != tf.uint8 or image.shape[-1] not in (3, None):
      raise ConfigError('randaugment works on uint8 RGB images: put it after decode and before value_range or '
                        f'normalize (got {image.dtype.name} {image.shape})')
    out = tf.ensure_shape(tf.cast(image, tf.float32), [*image.shape[:-1], 3])  # Crops may leave channels unknown.
    for i in range(num_layers):
      out = tf.ensure_shape(layer(out, tf.random.experimental.stateless_fold_in(seed, i)), out.shape)
    return tf.cast(out, tf.uint8)
  return _image_op(fn)
