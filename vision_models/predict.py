"""Classifies image files with an exported model and prints the top-5 labels with their probabilities.

  python -m vision_models.predict --model OUT img1.png img2.jpg [--top 5] [--pp 'decode|resize(224)|...']

Images go through the exported config's `data.pp_eval` (the evaluation preprocessing the model was trained with);
`--pp` replaces it (needed for a model converted without a config). Class names come from the TFDS dataset the config
names when it is prepared, else the class indices are printed.
"""
import argparse
import os
import sys
from typing import Any, Sequence

import jax
import numpy as np

from vision_models.errors import ConfigError

BATCH = 32


def class_names(config: Any) -> list[str] | None:
  """The label names of the config's TFDS dataset if it is prepared locally (nothing is downloaded or built)."""
  if config is None or 'data' not in config or not config.data.get('name'):
    return None
  from vision_models.data.images import label_names
  return label_names(config.data.name, config.data.get('data_dir'))


def predict(module: Any, variables: Any, images: np.ndarray, top: int = 5) -> tuple[np.ndarray, np.ndarray]:
  """`(indices, probabilities)`, each `[batch, top]`, best first, from the softmax of the logits."""
  apply = jax.jit(lambda v, x: jax.nn.softmax(module.apply(v, x, train=False)))
  probs = np.concatenate([np.asarray(apply(variables, images[i:i + BATCH])) for i in range(0, len(images), BATCH)])
  top = min(top, probs.shape[-1])
  indices = np.argsort(-probs, axis=-1, kind='stable')[:, :top]
  return indices, np.take_along_axis(probs, indices, axis=-1)


def run(model: str, paths: Sequence[str], top: int = 5, pp_spec: str | None = None) -> list[list[tuple[str, float]]]:
  """Loads the exported `model`, classifies `paths` and prints each file's top labels; returns them."""
  from vision_models.export import load_exported
  if top < 1:
    raise ConfigError(f'--top={top}; pass a positive number of labels')
  if not paths:
    raise ConfigError('no images given; usage: python -m vision_models.predict --model OUT IMAGE [IMAGE ...]')
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise ConfigError(f'image {missing[0]!r} not found' + (f' (and {len(missing) - 1} more)' if len(missing) > 1
                                                           else '') + '; pass paths of image files')
  module, variables, config = load_exported(model)
  if pp_spec is None:
    if config is None or not config.get('data', {}).get('pp_eval'):
      raise ConfigError(f'{model!r} has no config with data.pp_eval; pass --pp, e.g. '
                        "--pp 'decode(3)|resize_small(256)|central_crop(224)|normalize'")
    pp_spec = config.data.pp_eval
  from vision_models.data.images import load_images  # TensorFlow loads here, after main quiets its logs.
  channels = config.data.get('channels', 3) if config is not None else 3
  indices, probs = predict(module, variables, load_images(paths, pp_spec, channels), top)
  names = class_names(config)
  results = []
  for path, idx, prob in zip(paths, indices, probs):
    labels = [names[i] if names and i < len(names) else str(i) for i in idx]
    results.append(list(zip(labels, (float(p) for p in prob))))
    print(path)
    for rank, (label, p) in enumerate(results[-1], 1):
      print(f'  {rank}. {label:<24} {p:.4f}')
  return results


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', required=True, help='directory written by python -m vision_models.export')
  parser.add_argument('--top', type=int, default=5, help='how many labels to print per image')
  parser.add_argument('--pp', default=None, help="preprocessing instead of the config's data.pp_eval")
  parser.add_argument('images', nargs='*', help='image files (PNG, JPEG, GIF, BMP)')
  args = parser.parse_args(argv)
  try:
    run(args.model, args.images, args.top, args.pp)
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.exit(main())
