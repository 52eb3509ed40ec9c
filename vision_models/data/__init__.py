"""Input pipelines (the only package that imports TensorFlow): TFDS datasets, preprocessing ops, batches."""
from vision_models.data import augment  # noqa: F401  (registers the ImageNet ops with preprocess)
from vision_models.data.pipeline import DatasetInfo, builder, eval_batches, info, resolve_data_dir, train_batches

__all__ = ['DatasetInfo', 'builder', 'eval_batches', 'info', 'resolve_data_dir', 'train_batches']
