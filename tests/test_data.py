"""The TFDS + tf.data input pipeline on the digits dataset written into a temporary data dir."""
import numpy as np
import pytest

from vision_models import data
from vision_models.data import preprocess
from vision_models.errors import ConfigError, TrainingError

PP = 'decode(1)|resize(16)|random_shift(2)|value_range(-1, 1)|keep("image", "label")'


def test_digits_dataset_is_a_real_tfds_dataset(digits_dir):
  info = data.info('sklearn_digits', digits_dir)
  assert info.num_classes == 10
  assert info.split_sizes == {'train': 1437, 'test': 360}


def test_train_batches_shapes_range_and_determinism(digits_dir):
  first = list(zip(range(3), data.TrainBatches('sklearn_digits', 'train', digits_dir, PP, 32, seed=1,
                                                shuffle_buffer=200)))
  again = list(zip(range(3), data.TrainBatches('sklearn_digits', 'train', digits_dir, PP, 32, seed=1,
                                                shuffle_buffer=200)))
  other = next(data.TrainBatches('sklearn_digits', 'train', digits_dir, PP, 32, seed=2, shuffle_buffer=200))
  batch = first[0][1]
  assert batch['image'].shape == (32, 16, 16, 1) and batch['image'].dtype == np.float32
  assert batch['label'].dtype == np.int32 and set(np.unique(batch['label'])) <= set(range(10))
  assert -1.0 <= batch['image'].min() < batch['image'].max() <= 1.0
  for (_, a), (_, b) in zip(first, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  assert not np.array_equal(other['image'], batch['image'])


def test_resume_skips_exactly_the_consumed_batches(digits_dir):
  fresh = data.TrainBatches('sklearn_digits', 'train', digits_dir, PP, 16, seed=3, shuffle_buffer=100)
  expected = [next(fresh) for _ in range(5)][3:]
  resumed = data.TrainBatches('sklearn_digits', 'train', digits_dir, PP, 16, seed=3, start_step=3,
                               shuffle_buffer=100)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got['image'], want['image'])
    np.testing.assert_array_equal(got['label'], want['label'])


def test_eval_batches_cover_the_split_once_with_a_mask(digits_dir):
  pp = 'decode(1)|value_range(0, 1)|keep("image", "label")'
  batches = list(data.eval_batches('sklearn_digits', 'test', digits_dir, pp, 64))
  assert len(batches) == 6  # ceil(360 / 64)
  assert sum(b['mask'].sum() for b in batches) == 360
  assert all(b['image'].shape == (64, 8, 8, 1) for b in batches)
  assert batches[-1]['mask'][:360 - 5 * 64].all() and not batches[-1]['mask'][360 - 5 * 64:].any()


def test_unknown_dataset_and_unprepared_imagenet_are_clear_errors(tmp_path):
  with pytest.raises(ConfigError, match="unknown dataset 'no_such_dataset_xyz'"):
    data.info('no_such_dataset_xyz', str(tmp_path))
  with pytest.raises(ConfigError, match=r"'imagenet2012' is not prepared.*downloads/manual.*tfds build imagenet2012"):
    data.info('imagenet2012', str(tmp_path))


@pytest.mark.parametrize('spec,match', [
    ('decode|no_such_op(3)', "unknown preprocessing op 'no_such_op'"),
    ('resize(', 'cannot parse'),
    ('resize(16, bogus=1)', 'resize'),
    ('resize(size)', 'literals'),
])
def test_bad_preprocessing_specs_are_config_errors(spec, match):
  with pytest.raises(ConfigError, match=match):
    preprocess.parse(spec)


@pytest.fixture(scope='module')
def corrupt_dir(tmp_path_factory):
  """A dataset of 40 encoded PNGs, 4 of which are garbage bytes."""
  import tensorflow as tf
  import tensorflow_datasets as tfds
  data_dir = str(tmp_path_factory.mktemp('corrupt'))
  rng = np.random.default_rng(0)
  images = [tf.io.encode_png(rng.integers(0, 255, (8, 8, 1), dtype=np.uint8)).numpy() for _ in range(40)]
  for i in (3, 11, 25, 38):
    images[i] = b'not an image at all'
  features = tfds.features.FeaturesDict({'image': tfds.features.Tensor(shape=(), dtype=np.str_),
                                         'label': tfds.features.ClassLabel(num_classes=2)})
  tfds.dataset_builders.store_as_tfds_dataset(
      name='corrupt_pngs', version='1.0.0', features=features, data_dir=data_dir,
      split_datasets={'train': tf.data.Dataset.from_tensor_slices(
          {'image': np.array(images, dtype=object), 'label': np.arange(40) % 2})})
  return data_dir


def test_undecodable_images_are_skipped_and_counted(corrupt_dir):
  pp = 'decode(1)|value_range(0, 1)|keep("image", "label")'
  # No shuffling, so the first 4 batches are exactly the first epoch's 36 good examples.
  batches = data.TrainBatches('corrupt_pngs', 'train', corrupt_dir, pp, 9, seed=0, shuffle_buffer=1)
  first_epoch = [next(batches) for _ in range(4)]
  assert all(np.isfinite(b['image']).all() for b in first_epoch)
  assert batches.skipped == 4
  evaluated = list(data.eval_batches('corrupt_pngs', 'train', corrupt_dir, pp, 20))
  assert sum(b['mask'].sum() for b in evaluated) == 36


def test_undecodable_images_fail_clearly_when_configured(corrupt_dir):
  pp = 'decode(1)|value_range(0, 1)|keep("image", "label")'
  batches = data.TrainBatches('corrupt_pngs', 'train', corrupt_dir, pp, 9, seed=0, shuffle_buffer=40,
                              on_corrupt='fail')
  with pytest.raises(TrainingError, match="cannot be preprocessed.*on_corrupt='skip'"):
    for _ in range(5):
      next(batches)


def test_preprocess_arrays_keys_example_i_with_0_i():
  """The diffusion trainer scores samples through the classifier's pp_eval this way: one batch, the key of example i
  is [0, i], as the per-example call below."""
  import tensorflow as tf
  from vision_models.data.images import preprocess_arrays
  rng = np.random.default_rng(0)
  images, labels = rng.integers(0, 256, (5, 8, 8, 1), dtype=np.uint8), rng.integers(0, 10, 5)
  got = preprocess_arrays({'image': images, 'label': labels}, PP)
  assert got['image'].shape == (5, 16, 16, 1) and got['image'].dtype == np.float32
  pp = preprocess.parse(PP)
  for i in range(5):
    want = pp({'image': tf.constant(images[i]), 'label': tf.constant(labels[i])}, tf.constant([0, i], tf.int64))
    np.testing.assert_array_equal(got['image'][i], want['image'].numpy())
  np.testing.assert_array_equal(got['label'], labels)
