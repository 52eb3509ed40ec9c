"""Input pipelines (the only package that imports TensorFlow): TFDS datasets, preprocessing ops, batches."""
from vision_models.data import augment  # noqa: F401  (registers the ImageNet ops with preprocess)
from vision_models.data.pipeline import (ON_CORRUPT, DatasetInfo, TrainBatches, builder, eval_batches, info,
                                         resolve_data_dir, split_size)

__all__ = ['ON_CORRUPT', 'DatasetInfo', 'TrainBatches', 'builder', 'eval_batches', 'info', 'resolve_data_dir',
           'split_size']
