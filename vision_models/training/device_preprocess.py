"""Training augmentation on the accelerator, inside the jitted step: `config.data.pp_device`, e.g.
`'randaugment(2, 15)|flip_lr|value_range(-1, 1)'` after a host `pp_train` that only decodes and crops to uint8.

A host core decodes and crops about 2.4x more images per second than it can also RandAugment
(benchmarks/RESULTS.md), so moving the per-pixel work here is what lets a few host cores feed a GPU; uint8 batches
are also a quarter of the float32 bytes to transfer. The ops have the semantics of the host ops of the same name
(`data/augment.py`, `data/preprocess.py`, timm's), op by op to the rounding; only the random draws differ (JAX's
keys instead of TF's stateless seeds). Every op maps a batch `[B, H, W, C]` and a key to a batch, drawing per
example. TF-free.
"""
import math
from typing import Callable

import jax
import jax.numpy as jnp

from vision_models import op_spec
from vision_models.errors import ConfigError

DeviceOp = Callable[[jax.Array, jax.Array], jax.Array]  # (images [B, H, W, C], key) -> images
_REGISTRY = op_spec.Registry('device preprocessing op')
_register = _REGISTRY.register
_ATTEMPTS = 10  # Boxes drawn before giving up, as in timm's erasing.
_LEVEL_DENOM = 10.0  # RandAugment magnitude M is level M / 10 of each op's range.


def parse(spec: str) -> DeviceOp:
  """The composed op of `spec` ('op1|op2(...)'); ConfigError for an unknown op or bad arguments."""
  ops = _REGISTRY.build(spec)

  def apply(images: jax.Array, key: jax.Array) -> jax.Array:
    for i, op in enumerate(ops):
      images = op(images, jax.random.fold_in(key, i))
    return images
  return apply


def _per_example(fn: Callable[[jax.Array, jax.Array], jax.Array]) -> DeviceOp:
  return lambda images, key: jax.vmap(fn)(images, jax.random.split(key, images.shape[0]))


@_register('flip_lr')
def _flip_lr() -> DeviceOp:
  return _per_example(lambda image, key: jnp.where(jax.random.bernoulli(key), image[:, ::-1], image))


@_register('value_range')
def _value_range(low: float = -1.0, high: float = 1.0) -> DeviceOp:
  """uint8 [0, 255] → float32 [low, high]."""
  return lambda images, key: images.astype(jnp.float32) / 255.0 * (high - low) + low


@_register('normalize')
def _normalize(mean: tuple[float, ...] = (0.485, 0.456, 0.406), std: tuple[float, ...] = (0.229, 0.224, 0.225)
               ) -> DeviceOp:
  """uint8 → float32 standardised per channel (means and stds on the [0, 1] scale, ImageNet's by default)."""
  return lambda images, key: (images.astype(jnp.float32) / 255.0 - jnp.array(mean)) / jnp.array(std)


# RandAugment ops on one float32 image in [0, 255]: `fn(image, level, sign)`, level = magnitude / 10 ≥ 0 and sign ±1.

def _gray(image):
  """PIL's 'L' conversion in its 16-bit fixed point (exact in float32)."""
  weighted = jnp.sum(image * jnp.array([19595.0, 38470.0, 7471.0]), -1, keepdims=True)
  return jnp.floor((weighted + 32768.0) / 65536.0)


def _blend(degenerate, image, factor):
  return jnp.floor(jnp.clip(degenerate + factor * (image - degenerate), 0.0, 255.0))  # PIL truncates.


def _enhance_factor(increasing):
  if increasing:  # 1 = unchanged; the level moves the factor away from 1 in a random direction.
    return lambda level, sign: jnp.maximum(0.1, 1.0 + sign * level * 0.9)
  return lambda level, sign: level * 1.8 + 0.1


def _autocontrast(image, level, sign):
  lo, hi = image.min((0, 1), keepdims=True), image.max((0, 1), keepdims=True)
  # The exact quotient is a whole number or at least 1/255 above one; XLA:GPU divides through a reciprocal, which can
  # land a whole number just below itself (255 · (1/255) < 1), so floor gets a margin smaller than 1/255.
  scaled = (image - lo) * 255.0 / jnp.maximum(hi - lo, 1.0)
  return jnp.where(hi > lo, jnp.floor(scaled + 1e-3), image)


def _equalize(image, level, sign):
  """PIL's per-channel histogram equalisation: lut[i] = (cumcount_before(i) + step // 2) // step."""
  values = image.astype(jnp.int32).reshape(-1, image.shape[-1]).T  # [C, H·W]
  hist = jax.vmap(lambda v: jnp.bincount(v, length=256))(values)
  last = jnp.take_along_axis(hist, 255 - jnp.argmax(hist[:, ::-1] > 0, 1, keepdims=True), 1)[:, 0]
  step = (hist.sum(1) - last) // 255
  lut = (jnp.cumsum(hist, 1) - hist + step[:, None] // 2) // jnp.maximum(step, 1)[:, None]
  out = jnp.where(step[:, None] > 0, jnp.take_along_axis(jnp.minimum(lut, 255), values, 1), values)
  return out.T.reshape(image.shape).astype(jnp.float32)


def _posterize(increasing):
  def fn(image, level, sign):
    bits = (level * 4).astype(jnp.int32)
    bits = jnp.clip(4 - bits if increasing else bits, 0, 8)
    quantum = jnp.exp2((8 - bits).astype(jnp.float32))
    return jnp.floor(image / quantum) * quantum
  return fn


def _solarize(increasing):
  def fn(image, level, sign):
    threshold = jnp.minimum(256.0, jnp.floor(level * 256))
    return jnp.where(image >= (256.0 - threshold if increasing else threshold), 255.0 - image, image)
  return fn


def _solarize_add(image, level, sign):
  return jnp.where(image < 128, jnp.minimum(255.0, image + jnp.minimum(128.0, jnp.floor(level * 110))), image)


def _sharpness(factor):
  def fn(image, level, sign):
    # PIL's SMOOTH filter [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 on the interior; the border stays. The 3x3 box
    # sum is separable (exact: integers), 5x faster on the CPU than nine shifted slices.
    rows = image[:-2] + image[1:-1] + image[2:]
    total = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    smooth = jnp.round((total + 4 * image[1:-1, 1:-1]) / 13.0)
    degenerate = image.at[1:-1, 1:-1].set(smooth)
    return _blend(degenerate, image, factor(level, sign))
  return fn


def _affine(image, matrix, offset, fill):
  """Output pixel p samples the input at `matrix @ p + offset` (PIL's continuous coordinates, pixel centres at
  +0.5), bilinear, `fill` outside: it warps `image - fill` with zeros outside and adds `fill` back, as on the host."""
  height, width, channels = image.shape
  offset = offset + matrix.sum(1) * 0.5 - 0.5  # to pixel indices
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                            indexing='ij')
  x = matrix[0, 0] * cols + matrix[0, 1] * rows + offset[0]
  y = matrix[1, 0] * cols + matrix[1, 1] * rows + offset[1]
  fill = jnp.array(fill[:channels], jnp.float32)
  shifted = image - fill
  # One gather of all channels per tap (not map_coordinates per channel): XLA recomputes the coordinates in each
  # consumer, and rounding that differs between copies would pair one channel's taps with another's weights.
  x0, y0 = jnp.floor(x), jnp.floor(y)
  wx, wy = (x - x0)[..., None], (y - y0)[..., None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)

  def tap(r, c):
    inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
    return jnp.where(inside[..., None], shifted[jnp.clip(r, 0, height - 1), jnp.clip(c, 0, width - 1)], 0.0)

  out = ((1 - wy) * ((1 - wx) * tap(y0, x0) + wx * tap(y0, x0 + 1))
         + wy * ((1 - wx) * tap(y0 + 1, x0) + wx * tap(y0 + 1, x0 + 1)))
  return out + fill


# The geometric ops as `(level, sign, height, width) -> (matrix, offset)`: a layer warps once, with the drawn op's
# transform (the identity for the others), instead of warping every image five times and keeping one.

def _rotate(level, sign, height, width):
  angle = -sign * level * 30.0 * math.pi / 180  # PIL rotates counter-clockwise about the image centre.
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  center = jnp.array([width, height], jnp.float32) / 2  # (x, y)
  matrix = jnp.array([[cos, sin], [-sin, cos]])
  return matrix, center - matrix @ center


def _shear(axis):
  def fn(level, sign, height, width):
    f = sign * level * 0.3
    return jnp.array([[1.0, f], [0.0, 1.0]] if axis == 'x' else [[1.0, 0.0], [f, 1.0]]), jnp.zeros(2)
  return fn


def _translate(axis):
  def fn(level, sign, height, width):
    pixels = sign * level * 0.45 * (width if axis == 'x' else height)
    return jnp.eye(2), jnp.array([pixels, 0.0] if axis == 'x' else [0.0, pixels])
  return fn


_GEOMETRIC = {'Rotate': _rotate, 'ShearX': _shear('x'), 'ShearY': _shear('y'), 'TranslateX': _translate('x'),
              'TranslateY': _translate('y')}


def _pixel_ops(increasing: bool) -> dict[str, Callable]:
  factor = _enhance_factor(increasing)
  return {
      'AutoContrast': _autocontrast, 'Equalize': _equalize, 'Invert': lambda image, level, sign: 255.0 - image,
      'Posterize': _posterize(increasing), 'Solarize': _solarize(increasing), 'SolarizeAdd': _solarize_add,
      'Color': lambda image, level, sign: _blend(_gray(image), image, factor(level, sign)),
      'Contrast': lambda image, level, sign: _blend(jnp.floor(_gray(image).mean() + 0.5), image, factor(level, sign)),
      'Brightness': lambda image, level, sign: _blend(0.0, image, factor(level, sign)),
      'Sharpness': _sharpness(factor),
  }


_HOST_ORDER = (  # timm's order, which the ops' draw indexes
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd', 'Color',
    'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY')


def randaugment_ops(increasing: bool = True, fill: tuple[float, ...] = (124, 116, 104)) -> dict[str, Callable]:
  """timm's RandAugment op set by name, `fn(image, level, sign)`, as the host's `data.augment.randaugment_ops`."""
  def warp(transform):
    return lambda image, level, sign: _affine(image, *transform(level, sign, *image.shape[:2]), fill)
  table = {**_pixel_ops(increasing), **{name: warp(t) for name, t in _GEOMETRIC.items()}}
  return {name: table[name] for name in _HOST_ORDER}


@_register('randaugment')
def randaugment(num_layers: int = 2, magnitude: float = 9, magnitude_std: float = 0.5, increasing: bool = True,
                prob: float = 0.5, magnitude_max: float = 10, ops: tuple[str, ...] | None = None,
                fill: tuple[float, ...] = (124, 116, 104)) -> DeviceOp:
  """timm RandAugment on uint8 images, the arguments and draws of the host op `randaugment`: per example and layer,
  an op drawn uniformly is applied with probability `prob` at magnitude N(magnitude, magnitude_std) clipped to
  [0, magnitude_max]. Under `vmap` every pixel op runs on every image and a select keeps the drawn one; the
  geometric ops share one warp."""
  names = list(_HOST_ORDER) if ops is None else list(ops)
  unknown = sorted(set(names) - set(_HOST_ORDER))
  if unknown or not names:
    raise ConfigError(f'randaugment: unknown ops {unknown or names}; choose from {", ".join(_HOST_ORDER)}')
  pixel_ops = _pixel_ops(increasing)
  # Branch i is op names[i]; a geometric op's branch keeps the warped image, the last branch (not applied) the input.
  branches = [(lambda image, warped, level, sign, f=pixel_ops[n]: f(image, level, sign)) if n in pixel_ops
              else (lambda image, warped, level, sign: warped) for n in names]
  branches.append(lambda image, warped, level, sign: image)
  geometric = [(i, _GEOMETRIC[n]) for i, n in enumerate(names) if n in _GEOMETRIC]

  def layer(image, key):
    k_op, k_apply, k_mag, k_sign = jax.random.split(key, 4)
    if math.isinf(magnitude_std):
      mag = jax.random.uniform(k_mag, (), minval=0.0, maxval=float(magnitude))
    else:
      mag = magnitude + magnitude_std * jax.random.normal(k_mag)
    level = jnp.clip(mag, 0.0, float(magnitude_max)) / _LEVEL_DENOM
    sign = jnp.where(jax.random.uniform(k_sign) < 0.5, 1.0, -1.0)
    index = jnp.where(jax.random.uniform(k_apply) < prob, jax.random.randint(k_op, (), 0, len(names)), len(names))
    warped = image
    if geometric:
      matrix, offset = jnp.eye(2), jnp.zeros(2)
      for i, transform in geometric:
        m, o = transform(level, sign, *image.shape[:2])
        matrix, offset = jnp.where(index == i, m, matrix), jnp.where(index == i, o, offset)
      warped = _affine(image, matrix, offset, fill)
    return jnp.clip(jnp.round(jax.lax.switch(index, branches, image, warped, level, sign)), 0.0, 255.0)

  def fn(image, key):
    out = image.astype(jnp.float32)
    for i in range(num_layers):
      # The barrier keeps each layer's result in memory: fused into the next layer's many consumers, the whole
      # select tree would be recomputed in each of them (3.5x the time of the layers apart, measured on the CPU).
      out = jax.lax.optimization_barrier(layer(out, jax.random.fold_in(key, i)))
    return out.astype(jnp.uint8)

  op = _per_example(fn)

  def checked(images, key):
    if images.dtype != jnp.uint8 or images.shape[-1] != 3:
      raise ConfigError('device randaugment works on uint8 RGB images: end config.data.pp_train with the crop (no '
                        f'value_range or normalize) and put those after randaugment in pp_device (got {images.dtype} '
                        f'{images.shape})')
    return op(images, key)
  return checked


@_register('random_erasing')
def random_erasing(probability: float = 0.25, mode: str = 'pixel', min_area: float = 0.02, max_area: float = 1 / 3,
                   min_aspect: float = 0.3, max_aspect: float | None = None) -> DeviceOp:
  """timm RandomErasing on normalised float images, as the host op: with `probability`, one box of U(min_area,
  max_area) of the image and log-uniform aspect is filled with N(0, 1) per pixel ('pixel'), per channel ('rand')
  or zeros ('const')."""
  if mode not in ('pixel', 'rand', 'const'):
    raise ConfigError(f"random_erasing: unknown mode {mode!r}; choose 'pixel', 'rand' or 'const'")
  log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))

  def fn(image, key):
    k_apply, k_area, k_aspect, k_top, k_left, k_fill = jax.random.split(key, 6)
    height, width, channels = image.shape
    area = jax.random.uniform(k_area, (_ATTEMPTS,), minval=min_area, maxval=max_area) * height * width
    aspect = jnp.exp(jax.random.uniform(k_aspect, (_ATTEMPTS,), minval=log_aspect[0], maxval=log_aspect[1]))
    box_h, box_w = (jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32),
                    jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32))
    fits = (box_w < width) & (box_h < height)
    first = jnp.argmax(fits)
    box_h, box_w = box_h[first], box_w[first]
    top = jax.random.randint(k_top, (), 0, jnp.maximum(height - box_h, 0) + 1)
    left = jax.random.randint(k_left, (), 0, jnp.maximum(width - box_w, 0) + 1)
    rows, cols = jnp.arange(height)[:, None, None], jnp.arange(width)[None, :, None]
    box = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
    fill_shape = {'pixel': image.shape, 'rand': (1, 1, channels), 'const': (1, 1, 1)}[mode]
    fill = jax.random.normal(k_fill, fill_shape) if mode != 'const' else jnp.zeros(fill_shape)
    apply = fits.any() & (jax.random.uniform(k_apply) < probability)
    return jnp.where(apply & box, fill.astype(image.dtype), image)

  op = _per_example(fn)

  def checked(images, key):
    if not jnp.issubdtype(images.dtype, jnp.floating):
      raise ConfigError('random_erasing works on float images: put it after normalize or value_range')
    return op(images, key)
  return checked


def check(spec: str, image_shape: tuple[int, int, int], dtype='uint8') -> jax.ShapeDtypeStruct:
  """Traces `spec` on a batch of `image_shape` and `dtype` (what the host's pp_train hands over) and returns its
  output; a ConfigError when the ops do not fit together or the result is not the float input a model takes."""
  out = jax.eval_shape(parse(spec), jax.ShapeDtypeStruct((1, *image_shape), dtype), jax.random.key(0))
  if not jnp.issubdtype(out.dtype, jnp.floating):
    raise ConfigError(f'config.data.pp_device={spec!r} leaves the images {out.dtype}: end it with value_range or '
                      'normalize, which give the float input the model takes')
  return out

