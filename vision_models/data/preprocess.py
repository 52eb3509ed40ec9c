"""Preprocessing described by a string in the config, big_vision style: `'decode|resize(16)|value_range(-1, 1)'`.

Each op is registered by name and built from its literal arguments; the result maps a TFDS example dict to a new one.
Random ops are stateless and take a per-example seed, so the pipeline is deterministic for a given data seed.
"""
from typing import Callable

import tensorflow as tf

from vision_models import op_spec

Example = dict[str, tf.Tensor]
Op = Callable[[Example, tf.Tensor], Example]
_REGISTRY = op_spec.Registry('preprocessing op')
register = _REGISTRY.register  # `@register(name)` on `factory(*args, **kwargs) -> op(example, seed) -> example`.


def parse(spec: str) -> Op:
  """Builds the composed op for `spec` ('op1|op2(...)|...'), raising ConfigError for an unknown op or bad args."""
  ops = _REGISTRY.build(spec)

  def apply(example: Example, seed: tf.Tensor) -> Example:
    for i, op in enumerate(ops):
      example = op(example, tf.random.experimental.stateless_fold_in(seed, i))
    return example

  return apply


def image_dtype(spec: str) -> str:
  """The dtype name of the image `spec` makes from encoded bytes ('uint8', 'float32'), found by tracing it."""
  op = parse(spec)
  trace = tf.function(lambda image: op({'image': image, 'label': tf.constant(0, tf.int64)},
                                       tf.constant([0, 0], tf.int64))['image'], autograph=False)
  return trace.get_concrete_function(tf.TensorSpec([], tf.string)).structured_outputs.dtype.name


def _image_op(fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> Op:
  def op(example, seed):
    return {**example, 'image': fn(example['image'], seed)}
  return op


@register('decode')
def _decode(channels: int = 3) -> Op:
  """Decodes encoded image bytes (JPEG/PNG) to uint8; a no-op for images TFDS already decoded."""
  def fn(image, seed):
    if image.dtype == tf.string:
      image = tf.io.decode_image(image, channels=channels, expand_animations=False)
    return image
  return _image_op(fn)


@register('to_rgb')
def _to_rgb() -> Op:
  return _image_op(lambda image, seed: tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image)


@register('resize')
def _resize(size: int | tuple[int, int], method: str = 'bilinear', antialias: bool = True) -> Op:
  hw = (size, size) if isinstance(size, int) else tuple(size)

  def fn(image, seed):
    dtype = image.dtype
    image = tf.image.resize(image, hw, method=method, antialias=antialias)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), dtype) if dtype == tf.uint8 else image
  return _image_op(fn)


@register('random_shift')
def _random_shift(pad: int) -> Op:
  """Pads by `pad` pixels (edge values) and crops back at a random offset: translation augmentation."""
  def fn(image, seed):
    shape = tf.shape(image)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode='SYMMETRIC')
    return tf.image.stateless_random_crop(padded, shape, seed)
  return _image_op(fn)


@register('flip_lr')
def _flip_lr() -> Op:
  return _image_op(lambda image, seed: tf.image.stateless_random_flip_left_right(image, seed))


@register('resize_small')
def _resize_small(size: int, method: str = 'bilinear') -> Op:
  """Resizes the shorter side to `size`, keeping the aspect ratio (before a central crop at evaluation)."""
  def fn(image, seed):
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new_hw = tf.cast(tf.round(hw * size / tf.reduce_min(hw)), tf.int32)
    out = tf.image.resize(image, new_hw, method=method, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), image.dtype) if image.dtype == tf.uint8 else out
  return _image_op(fn)


def crop_window(image: tf.Tensor, box_fn: Callable[[tf.Tensor, tf.Tensor], tuple]) -> tf.Tensor:
  """The crop `box_fn(height, width) -> (top, left, box_h, box_w)` of a decoded image, or of encoded bytes: a JPEG
  then decodes only that window (`decode_and_crop_jpeg`: 1.3x the images/s of decoding whole at 500x375 -> 224; the
  same pixels inside the window, differences at its edges from the chroma upsampling, mean 0.02 of 255), other
  formats (PNG) decode whole, as RGB."""
  def crop(decoded):
    top, left, box_h, box_w = box_fn(tf.shape(decoded)[0], tf.shape(decoded)[1])
    return decoded[top:top + box_h, left:left + box_w]

  if image.dtype != tf.string:
    return crop(image)

  def jpeg():
    hw = tf.image.extract_jpeg_shape(image)
    window = tf.stack(box_fn(hw[0], hw[1]))
    return tf.image.decode_and_crop_jpeg(image, window, channels=3)

  return tf.cond(tf.io.is_jpeg(image), jpeg,
                 lambda: crop(tf.io.decode_image(image, channels=3, expand_animations=False)))


@register('inception_crop')
def _inception_crop(size: int, area_min: float = 0.05, area_max: float = 1.0, method: str = 'bilinear',
                    antialias: bool = False) -> Op:
  """Random crop of 5%–100% of the area with aspect ratio in [3/4, 4/3], resized to `size`: big_vision's
  `decode_jpeg_and_inception_crop` (AugReg), whose defaults these are (no antialiasing: 1.3x the images/s of
  antialiased resizing on a host core). Takes decoded images or encoded bytes (a JPEG then decodes only the crop)."""
  def box(seed, h, w):
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.stack([h, w, 3]), tf.zeros([0, 0, 4], tf.float32), seed=seed, area_range=(area_min, area_max),
        aspect_ratio_range=(3 / 4, 4 / 3), min_object_covered=0.0, use_image_if_no_bounding_boxes=True)
    return begin[0], begin[1], crop[0], crop[1]

  def fn(image, seed):
    cropped = crop_window(image, lambda h, w: box(seed, h, w))
    out = tf.image.resize(cropped, (size, size), method=method, antialias=antialias)
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8) if cropped.dtype == tf.uint8 else out
  return _image_op(fn)


@register('central_crop')
def _central_crop(size: int) -> Op:
  return _image_op(lambda image, seed: tf.image.resize_with_crop_or_pad(image, size, size))


@register('value_range')
def _value_range(low: float = -1.0, high: float = 1.0) -> Op:
  """uint8 [0, 255] → float32 [low, high]."""
  return _image_op(lambda image, seed: tf.cast(image, tf.float32) / 255.0 * (high - low) + low)


@register('normalize')
def _normalize(mean: tuple[float, ...] = (0.485, 0.456, 0.406), std: tuple[float, ...] = (0.229, 0.224, 0.225)) -> Op:
  """uint8 → float32 standardised per channel with means and stds on the [0, 1] scale (ImageNet's by default)."""
  def fn(image, seed):
    return (tf.cast(image, tf.float32) / 255.0 - tf.constant(mean)) / tf.constant(std)
  return _image_op(fn)


@register('keep')
def _keep(*keys: str) -> Op:
  return lambda example, seed: {k: example[k] for k in keys}

