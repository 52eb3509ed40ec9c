"""Images outside the training pipeline, through TensorFlow: image files and in-memory arrays run through a
preprocessing string (`predict`, the diffusion trainer's classifier), the label names of a prepared TFDS dataset, and
for `diffusion.encode_latents` a TFDS split mapped by a numpy function and the latents dataset written back."""
import os
from typing import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vision_models.data import preprocess
from vision_models.data.pipeline import resolve_data_dir
from vision_models.errors import ConfigError


def label_names(name: str, data_dir: str | None = None) -> list[str] | None:
  """The label names of the TFDS dataset `name` if it is prepared locally (nothing is downloaded or built)."""
  try:
    builder = tfds.builder(name, data_dir=resolve_data_dir(data_dir))
    return list(builder.info.features['label'].names) if builder.is_prepared() else None
  except Exception:  # Not a TFDS dataset, no label feature: indices will do.
    return None


def load_images(paths: Sequence[str], pp_spec: str, channels: int = 3) -> np.ndarray:
  """Float32 NHWC images: each file's bytes through the preprocessing `pp_spec` (decoded first if it has no
  `decode` op)."""
  pp = preprocess.parse(pp_spec)
  decodes = any(op.strip().startswith('decode') for op in pp_spec.split('|'))
  images = []
  for i, path in enumerate(paths):
    if not os.path.isfile(path):
      raise ConfigError(f'image {path!r} not found; pass paths of image files (PNG, JPEG, GIF, BMP)')
    with open(path, 'rb') as f:
      image = tf.constant(f.read())
    try:
      if not decodes:
        image = tf.io.decode_image(image, channels=channels, expand_animations=False)
      example = pp({'image': image, 'label': tf.constant(0, tf.int64)}, tf.constant([0, i], tf.int64))
    except tf.errors.InvalidArgumentError as e:
      raise ConfigError(f'cannot read {path!r} as an image ({e.message.splitlines()[0][:120]})') from None
    images.append(example['image'].numpy())
  return np.stack(images).astype(np.float32)


def preprocess_arrays(examples: dict[str, np.ndarray], pp_spec: str) -> dict[str, np.ndarray]:
  """The examples (arrays sharing a leading axis) through the preprocessing `pp_spec` in one batch, example i with
  the random key [0, i]."""
  pp = preprocess.parse(pp_spec)
  n = len(next(iter(examples.values())))
  ds = tf.data.Dataset.from_tensor_slices(examples).enumerate()
  ds = ds.map(lambda i, ex: pp(ex, tf.stack([tf.constant(0, tf.int64), i]))).batch(n)
  return next(ds.as_numpy_iterator())


def mapped_batches(source: tfds.core.DatasetBuilder, split: str, fn: Callable[[np.ndarray], np.ndarray],
                   shape: tuple[int, ...], batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(uint8 `fn(image)` batches [b, *shape], labels [b]) of a TFDS split in its order, `fn` running in tf.data's
  threads; the last batch may be short."""
  def apply(example):
    image = tf.numpy_function(fn, [example['image']], tf.uint8, stateful=False)
    return tf.ensure_shape(image, shape), example['label']

  ds = source.as_dataset(split=split, shuffle_files=False)
  ds = ds.map(apply, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)
  yield from tfds.as_numpy(ds)


def store_latents(name: str, out: str, latent_shape: tuple[int, ...], labels: Sequence[str], description: str,
                  split_examples: dict[str, Iterator[tuple[int, dict]]]) -> None:
  """Writes the TFDS dataset `name` (version 1.0.0) into `out`: float32 `latent` and `label` (named `labels`)
  features, each split's `(key, example)` pairs."""
  tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version='1.0.0', data_dir=out,
      features=tfds.features.FeaturesDict({
          'latent': tfds.features.Tensor(shape=latent_shape, dtype=np.float32),
          'label': tfds.features.ClassLabel(names=labels),
      }),
      description=description, split_datasets=split_examples)
