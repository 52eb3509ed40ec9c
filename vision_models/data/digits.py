"""scikit-learn's bundled digits (1,797 real 8×8 handwritten digits) written once as a local TFDS dataset.

It needs no download, so the quickstart runs anywhere; once written it is read with `tfds` + `tf.data` like ImageNet.
"""
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

NAME = 'sklearn_digits'
VERSION = '1.0.0'
TEST_FRACTION = 0.2


def is_prepared(data_dir: str) -> bool:
  return os.path.exists(os.path.join(data_dir, NAME, VERSION, 'dataset_info.json'))


def prepare(data_dir: str) -> None:
  """Writes `sklearn_digits` (train 1,437 / test 360, stratified, fixed seed) into `data_dir` unless it is there."""
  if is_prepared(data_dir):
    return
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # 0..16 → 0..255, HW1.
  labels = digits.target.astype(np.int64)
  split = train_test_split(images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=0)
  train_x, test_x, train_y, test_y = split
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(8, 8, 1)),
      'label': tfds.features.ClassLabel(num_classes=10),
  })
  tfds.dataset_builders.store_as_tfds_dataset(
      name=NAME, version=VERSION, features=features, data_dir=data_dir,
      description="scikit-learn's optical recognition of handwritten digits (UCI), 8x8 grayscale.",
      split_datasets={
          'train': tf.data.Dataset.from_tensor_slices({'image': train_x, 'label': train_y}),
          'test': tf.data.Dataset.from_tensor_slices({'image': test_x, 'label': test_y}),
      })
