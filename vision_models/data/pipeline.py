"""TFDS + tf.data input pipeline: per-host split, shuffle, preprocessing, batching, prefetch → numpy batches.

The data order is a function of the seed alone (seeded shuffle, stateless random ops keyed by the element's index), so
a run resumed at step s skips exactly the s batches it already consumed and sees the same examples as an
uninterrupted one.
"""
import dataclasses
import math
import os
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vision_models.data import digits, preprocess
from vision_models.errors import ConfigError, TrainingError

# Datasets the project writes itself from data a package ships: name → prepare(data_dir).
LOCAL_DATASETS = {digits.NAME: digits.prepare}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int
  split_sizes: dict[str, int]


def resolve_data_dir(data_dir: str | None) -> str:
  """The config's data dir, else TFDS's default (`$TFDS_DATA_DIR` or ~/tensorflow_datasets)."""
  return os.path.expanduser(data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')


def builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """A prepared TFDS builder for `name`, or a ConfigError saying how to prepare it."""
  data_dir = resolve_data_dir(data_dir)
  if name in LOCAL_DATASETS:
    LOCAL_DATASETS[name](data_dir)
  try:
    b = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError, or a name TFDS cannot even parse.
    raise ConfigError(f'unknown dataset {name!r} (config.data.name): not a TFDS dataset nor one of '
                      f'{", ".join(LOCAL_DATASETS)} ({type(e).__name__})') from None
  if not b.is_prepared():
    manual = getattr(b, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
    manual_dir = os.path.join(data_dir, 'downloads', 'manual')
    how = (f'put its files into {manual_dir} (for imagenet2012: ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar '
           'from image-net.org), then ') if manual else ''
    raise ConfigError(f'dataset {name!r} is not prepared in {data_dir}: {how}run '
                      f'`tfds build {name} --data_dir={data_dir}` once (or set config.data.data_dir)')
  return b


def info(name: str, data_dir: str | None) -> DatasetInfo:
  b = builder(name, data_dir)
  return DatasetInfo(name, b.info.features['label'].num_classes,
                     {split: s.num_examples for split, s in b.info.splits.items()})


def split_size(name: str, split: str, data_dir: str | None, field: str = 'split') -> int:
  """Examples in `split` (TFDS syntax: 'train', 'train[:90%]'); a ConfigError naming `field` when there is no such
  split."""
  b = builder(name, data_dir)
  try:
    return b.info.splits[split].num_examples
  except Exception:  # ValueError or KeyError, by TFDS version
    raise ConfigError(f'dataset {name!r} has no split {split!r} ({field}); it has {", ".join(b.info.splits)}') from None


def _load(name: str, split: str, data_dir: str | None, shuffle_files: bool, seed: int) -> tf.data.Dataset:
  b = builder(name, data_dir)
  split_size(name, split, data_dir)
  host_split = tfds.split_for_jax_process(split, process_index=jax.process_index(),
                                          process_count=jax.process_count())
  read_config = tfds.ReadConfig(shuffle_seed=seed, add_tfds_id=False)
  # Images stay encoded until the `decode` op, after the shuffle: a shuffle buffer of encoded JPEGs is ~10× smaller.
  skip = {k: tfds.decode.SkipDecoding() for k, f in b.info.features.items() if isinstance(f, tfds.features.Image)}
  return b.as_dataset(split=host_split, shuffle_files=shuffle_files, read_config=read_config, decoders=skip)


ON_CORRUPT = ('skip', 'fail')


def _preprocessed(ds: tf.data.Dataset, seed: int, pp: preprocess.Op, on_corrupt: str) -> tf.data.Dataset:
  """Applies `pp` with a per-element seed `[seed, index]`; keeps the index as `_index`. With `on_corrupt='skip'`,
  elements whose preprocessing fails (an undecodable image) are dropped; the gaps in `_index` count them."""
  if on_corrupt not in ON_CORRUPT:
    raise ConfigError(f'config.data.on_corrupt={on_corrupt!r}; choose one of {", ".join(ON_CORRUPT)}')

  def fn(index, example):
    return {**pp(example, tf.stack([tf.constant(seed, tf.int64), index])), '_index': index}
  # Not autograph-converted: the ops need no conversion, and a ConfigError raised while tracing then reaches the user.
  ds = ds.enumerate().map(tf.autograph.experimental.do_not_convert(fn), num_parallel_calls=tf.data.AUTOTUNE)
  image = ds.element_spec.get('image') if isinstance(ds.element_spec, dict) else None
  if image is not None and image.dtype == tf.string:
    raise ConfigError("the preprocessing spec leaves the image encoded: start it with 'decode'")
  return ds.ignore_errors() if on_corrupt == 'skip' else ds


def _numpy(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """Batches as numpy; a failing element (on_corrupt='fail') becomes a TrainingError naming the fix."""
  options = tf.data.Options()
  options.deterministic = True
  try:
    yield from tfds.as_numpy(ds.with_options(options))
  except tf.errors.InvalidArgumentError as e:
    raise TrainingError(f'an example cannot be preprocessed ({e.message.splitlines()[0][:200]}); '
                        "set config.data.on_corrupt='skip' to skip and count such examples") from None


class TrainBatches:
  """Endless per-host training batches `{'image': NHWC, 'label': int32}` (float32 images, or uint8 ones for a step
  that augments on the device: `config.data.pp_device`), starting after `start_step`.

  `skipped` counts the examples dropped as undecodable so far (see `_preprocessed`). `repeated_aug=k` (DeiT's
  repeated augmentation, `config.data.repeated_aug`) yields each shuffled example k times in a row, each copy with its
  own augmentation seed; a step still holds `per_host_batch` images. `feature` names the example's field that becomes
  `image`, the model input (`config.data.feature`, e.g. 'latent' for an `encode_latents` dataset).
  """

  def __init__(self, name: str, split: str, data_dir: str | None, pp_spec: str, per_host_batch: int, seed: int,
               start_step: int = 0, shuffle_buffer: int = 10_000, on_corrupt: str = 'skip', repeated_aug: int = 1,
               feature: str = 'image'):
    if repeated_aug < 1:
      raise ConfigError(f'config.data.repeated_aug={repeated_aug} must be a positive integer (1 turns it off)')
    pp = preprocess.parse(pp_spec)
    ds = _load(name, split, data_dir, shuffle_files=True, seed=seed)
    ds = ds.repeat().shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeated_aug > 1:  # Before the index seeding, so the copies differ.
      ds = ds.flat_map(lambda example: tf.data.Dataset.from_tensors(example).repeat(repeated_aug))
    ds = _preprocessed(ds, seed, pp, on_corrupt)
    ds = ds.skip(start_step * per_host_batch)  # Resume: the data order is a function of the seed alone.
    self._batches = _numpy(ds.batch(per_host_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    self.skipped = 0
    self._next_index = None
    self._feature = feature

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._batches)
    index = batch.pop('_index')
    first = int(index[0]) if self._next_index is None else self._next_index
    self.skipped += int(index[-1]) - first + 1 - len(index)
    self._next_index = int(index[-1]) + 1
    if self._feature not in batch:
      raise ConfigError(f'config.data.feature={self._feature!r} is not in the preprocessed examples (they hold '
                        f'{", ".join(batch)}); name the model input field, and keep it in config.data.pp_train')
    return {'image': batch[self._feature], 'label': batch['label'].astype(np.int32)}



def eval_batches(name: str, split: str, data_dir: str | None, pp_spec: str, per_host_batch: int,
                 on_corrupt: str = 'skip') -> Iterator[dict[str, np.ndarray]]:
  """One pass over `split` in full batches; padding examples carry `mask` 0 so every host runs as many steps."""
  pp = preprocess.parse(pp_spec)
  total = split_size(name, split, data_dir)
  num_batches = math.ceil(math.ceil(total / jax.process_count()) / per_host_batch)
  ds = _preprocessed(_load(name, split, data_dir, shuffle_files=False, seed=0), 0, pp, on_corrupt)
  it = _numpy(ds.batch(per_host_batch).prefetch(tf.data.AUTOTUNE))
  template = None
  for _ in range(num_batches):
    batch = next(it, None)
    if batch is None:  # This host ran out first: a fully masked batch keeps the collective steps in step.
      batch = {k: v[:0] for k, v in template.items()}
    template = batch
    n = len(batch['label'])
    pad = per_host_batch - n
    yield {'image': np.concatenate([batch['image'], np.zeros((pad, *batch['image'].shape[1:]), np.float32)]),
           'label': np.concatenate([batch['label'], np.zeros(pad, batch['label'].dtype)]).astype(np.int32),
           'mask': np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])}
