"""ImageNet-style input pipeline throughput on the CPU: JPEGs generated locally and written as a TFDS dataset, then
read by the project's training pipeline (`vision_models.data.TrainBatches`: shuffle, decode, crop, RandAugment,
flip, value range, batch).

  python -m benchmarks.input_pipeline [--images 256] [--size 224] [--batch 32] [--batches 8] [--pp imagenet|deit|
      plain|plain_decode_whole|device|all] [--min-rate 0] [--data-dir DIR]

Prints one JSON line for the dataset written and one per preprocessing spec with `images_per_sec` and
`images_per_sec_per_core` (cores this process may use). Exits with status 1 when a batch is malformed (shape, dtype,
non-finite values, range, labels) or a rate is below `--min-rate`.
"""
import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from vision_models import data

NAME, CLASSES = 'synthetic_jpegs', 1000
KEEP = 'keep("image", "label")'


def specs(size: int) -> dict[str, str]:
  """The crops take the JPEG bytes and decode only their window, as the configs' specs do; `plain_decode_whole`
  decodes the whole image first, for comparison."""
  return {
      'imagenet': f'inception_crop({size})|randaugment(2, 9, 0.5)|flip_lr|value_range(-1, 1)|{KEEP}',
      'deit': f'random_resized_crop({size})|flip_lr|randaugment()|normalize|random_erasing(0.25)|{KEEP}',
      'plain': f'inception_crop({size})|flip_lr|value_range(-1, 1)|{KEEP}',
      'plain_decode_whole': f'decode|inception_crop({size})|flip_lr|value_range(-1, 1)|{KEEP}',
      # The host half of `imagenet` when the step augments (config.data.pp_device): uint8 crops.
      'device': f'inception_crop({size})|{KEEP}',
  }


def write_dataset(data_dir: str, count: int, min_side: int, max_side: int, seed: int = 0) -> dict:
  """`count` JPEGs of random sizes with smooth random content (upsampled noise, like photographs compress)."""
  rng = np.random.default_rng(seed)

  def examples():
    for i in range(count):
      h, w = (int(x) for x in rng.integers(min_side, max_side + 1, size=2))
      coarse = Image.fromarray(rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), np.uint8))
      image = np.asarray(coarse.resize((w, h), Image.BICUBIC)) + rng.normal(0, 8, (h, w, 3))
      yield {'image': np.clip(image, 0, 255).astype(np.uint8), 'label': i % CLASSES}

  start = time.perf_counter()
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
      'label': tfds.features.ClassLabel(num_classes=CLASSES)})
  signature = {'image': tf.TensorSpec((None, None, 3), tf.uint8), 'label': tf.TensorSpec((), tf.int64)}
  with contextlib.redirect_stdout(sys.stderr):  # TFDS prints progress; stdout carries only JSON lines.
    tfds.dataset_builders.store_as_tfds_dataset(
        name=NAME, version='1.0.0', features=features, data_dir=data_dir, description='Synthetic JPEGs (benchmark).',
        split_datasets={'train': tf.data.Dataset.from_generator(examples, output_signature=signature)})
  jpeg_bytes = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(data_dir) for f in files)
  return {'dataset': NAME, 'images': count, 'sides': [min_side, max_side], 'dataset_bytes': jpeg_bytes,
          'write_seconds': round(time.perf_counter() - start, 2)}


def check_batch(batch: dict, batch_size: int, size: int, value_range: bool, dtype=np.float32) -> list[str]:
  """What is wrong with a batch (empty when it is well-formed)."""
  image, label = batch['image'], batch['label']
  problems = []
  if image.shape != (batch_size, size, size, 3) or image.dtype != dtype:
    problems.append(f'image {image.shape} {image.dtype}, expected ({batch_size}, {size}, {size}, 3) {dtype.__name__}')
  if not np.isfinite(image).all():
    problems.append('non-finite pixel values')
  if value_range and (image.min() < -1 or image.max() > 1):
    problems.append(f'pixel values in [{image.min():.3f}, {image.max():.3f}], outside [-1, 1]')
  if image.std() == 0:
    problems.append('constant images')
  if label.shape != (batch_size,) or label.dtype != np.int32 or label.min() < 0 or label.max() >= CLASSES:
    problems.append(f'labels {label.shape} {label.dtype} in [{label.min()}, {label.max()}]')
  return problems


def measure(data_dir: str, name: str, spec: str, args) -> dict:
  batches = data.TrainBatches(NAME, 'train', data_dir, spec, args.batch, seed=0, shuffle_buffer=args.images)
  dtype = np.dtype(data.preprocess.image_dtype(spec)).type  # uint8 for a spec that leaves the rest to the device
  check = lambda batch: check_batch(batch, args.batch, args.size, 'value_range' in spec, dtype)
  problems = check(next(batches))  # Also builds the graph.
  start = time.perf_counter()
  timed = [next(batches) for _ in range(args.batches)]
  seconds = time.perf_counter() - start
  for batch in timed:  # Checked after the clock stops: the checks would take the pipeline's cores.
    problems += check(batch)
  rate = args.batches * args.batch / seconds
  cores = len(os.sched_getaffinity(0))
  return {'pp': name, 'spec': spec, 'batch': args.batch, 'size': args.size, 'images': args.batches * args.batch,
          'seconds': round(seconds, 3), 'images_per_sec': round(rate, 1), 'cores': cores,
          'images_per_sec_per_core': round(rate / cores, 1), 'problems': sorted(set(problems))}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--images', type=int, default=256, help='JPEGs to generate')
  parser.add_argument('--min-side', type=int, default=300)
  parser.add_argument('--max-side', type=int, default=500)
  parser.add_argument('--size', type=int, default=224, help='output resolution')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--batches', type=int, default=8, help='batches timed after the first')
  parser.add_argument('--pp', default='imagenet', choices=[*specs(224), 'all'])
  parser.add_argument('--min-rate', type=float, default=0.0, help='fail below this many images/sec')
  parser.add_argument('--data-dir', help='reuse (or write once into) this TFDS data dir instead of a temporary one')
  args = parser.parse_args(argv)
  if min(args.images, args.size, args.batch, args.batches, args.min_side) < 1 or args.max_side < args.min_side:
    parser.error('--images, --size, --batch, --batches and --min-side must be positive; --max-side ≥ --min-side')

  chosen = specs(args.size) if args.pp == 'all' else {args.pp: specs(args.size)[args.pp]}
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir or tmp
    if not os.path.exists(os.path.join(data_dir, NAME)):
      print(json.dumps(write_dataset(data_dir, args.images, args.min_side, args.max_side)), flush=True)
    ok = True
    for name, spec in chosen.items():
      result = measure(data_dir, name, spec, args)
      result['ok'] = not result['problems'] and result['images_per_sec'] >= args.min_rate
      ok &= result['ok']
      print(json.dumps(result), flush=True)
  if not ok:
    print(f'input pipeline check failed (malformed batches or below --min-rate {args.min_rate})', file=sys.stderr)
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
