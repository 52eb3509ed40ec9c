"""Encodes a TFDS image dataset into SD-VAE latents once, written as a TFDS dataset that training reads like any other.

    python -m vision_models.diffusion.encode_latents --dataset imagenet2012 --split train --data_dir DATA \\
        --vae sd-vae-ft-ema/diffusion_pytorch_model.safetensors --image_size 256 --out DATA [--flip]

Each image is center-cropped as ADM / DiT do (`center_crop_arr`: box-halve while the short side is at least twice
the size, bicubic resize of the short side to the size, center crop), mapped to [-1, 1], encoded, and one posterior
sample times `vae.SCALE` is stored as `latent` float32 `[size/8, size/8, 4]` with its `label`. `--flip` also stores
the latent of the mirrored image as a second example, which gives DiT's flip augmentation after shuffling. The result
is the TFDS dataset `--name` (default `{dataset}_latents{size}`) in `--out`; TensorFlow stays in
`vision_models.data.images`.
"""
import argparse
import functools
import sys
from typing import Any, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

from vision_models.diffusion import vae as vae_lib
from vision_models.errors import ConfigError


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """ADM's `center_crop_arr` on a uint8 HWC array (grayscale becomes RGB) → uint8 `[size, size, 3]`."""
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert('RGB')
  while min(pil.size) >= 2 * size:
    pil = pil.resize(tuple(s // 2 for s in pil.size), resample=Image.BOX)
  scale = size / min(pil.size)
  pil = pil.resize(tuple(round(s * scale) for s in pil.size), resample=Image.BICUBIC)
  arr = np.asarray(pil)
  top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
  return arr[top:top + size, left:left + size]


def _encoder(module: vae_lib.AutoencoderKL, variables: Any, batch_size: int, seed: int):
  """A jitted `(images uint8, batch index) -> scaled latent samples`, the batch split over the local devices."""
  mesh = Mesh(np.array(jax.local_devices()), ('data',))
  sharding = NamedSharding(mesh, P('data'))
  variables = jax.device_put(variables, NamedSharding(mesh, P()))

  @jax.jit
  def encode(params, images, index):
    mean, logvar = module.apply(params, images.astype(np.float32) / 127.5 - 1.0, method=module.encode)
    key = jax.random.fold_in(jax.random.key(seed), index)
    return vae_lib.SCALE * vae_lib.sample(key, mean, logvar)

  def run(images: np.ndarray, index: int) -> np.ndarray:
    n = len(images)
    padded = np.concatenate([images, np.zeros((batch_size - n, *images.shape[1:]), images.dtype)])
    return np.asarray(encode(variables, jax.device_put(padded, sharding), index))[:n]
  return run


def _examples(source, split: str, run, size: int, batch_size: int, flip: bool) -> Iterator[tuple[int, dict]]:
  from vision_models.data.images import mapped_batches
  count = 0
  per_step = batch_size // 2 if flip else batch_size
  crop = functools.partial(center_crop, size=size)
  for index, (images, labels) in enumerate(mapped_batches(source, split, crop, (size, size, 3), per_step)):
    if flip:  # Each image followed by its mirror image.
      images = np.stack([images, images[:, :, ::-1]], axis=1).reshape(-1, *images.shape[1:])
      labels = np.repeat(labels, 2)
    for latent, label in zip(run(images, index), labels):
      yield count, {'latent': latent, 'label': label}
      count += 1


def encode_dataset(dataset: str, splits: list[str], data_dir: str | None, vae_path: str, image_size: int, out: str,
                   name: str | None = None, flip: bool = False, batch_size: int = 64, seed: int = 0) -> str:
  """Writes the latents dataset and returns its name (read it with `tfds.builder(name, data_dir=out)`)."""
  from vision_models.data import pipeline
  from vision_models.data.images import store_latents
  module, variables = vae_lib.load_pretrained(vae_path)
  factor = module.downsample_factor
  if image_size % factor:
    raise ConfigError(f'--image_size {image_size} must be a multiple of {factor}, the VAE downsampling factor')
  devices = jax.local_device_count()
  step = devices * (2 if flip else 1)
  batch_size = -(-batch_size // step) * step  # Whole images (and mirrors) per device.
  source = pipeline.builder(dataset, data_dir)
  features = source.info.features
  if 'image' not in features or 'label' not in features:
    raise ConfigError(f'dataset {dataset!r} needs `image` and `label` features; it has {", ".join(features)}')
  missing = [s for s in splits if s not in source.info.splits]
  if missing:
    raise ConfigError(f'dataset {dataset!r} has no split {", ".join(missing)}; it has {", ".join(source.info.splits)}')
  name = name or f'{dataset}_latents{image_size}'
  latent_shape = (image_size // factor, image_size // factor, module.latent_channels)
  run = _encoder(module, variables, batch_size, seed)
  description = (f'SD-VAE latents ({vae_lib.SCALE} x posterior sample) of {dataset} at {image_size}px, '
                 f'ADM center crop{", each image and its mirror image" if flip else ""}.')
  try:
    store_latents(name, out, latent_shape, features['label'].names, description,
                  {s: _examples(source, s, run, image_size, batch_size, flip) for s in splits})
  except RuntimeError as e:
    if 'already prepared' not in str(e):
      raise
    raise ConfigError(f'{out}/{name} exists already: delete it or pick another --name') from None
  return name


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--dataset', required=True, help='TFDS name, e.g. imagenet2012')
  parser.add_argument('--split', default='train', help='one or more splits, comma-separated')
  parser.add_argument('--data_dir', help='TFDS data dir of the image dataset')
  parser.add_argument('--vae', required=True, help='diffusers AutoencoderKL .safetensors (config.json beside it)')
  parser.add_argument('--image_size', type=int, default=256)
  parser.add_argument('--out', required=True, help='TFDS data dir to write the latents dataset into')
  parser.add_argument('--name', help='name of the latents dataset (default {dataset}_latents{size})')
  parser.add_argument('--flip', action='store_true', help='also store the latent of each mirrored image')
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--seed', type=int, default=0, help='seed of the posterior samples')
  args = parser.parse_args(argv)
  try:
    name = encode_dataset(args.dataset, args.split.split(','), args.data_dir, args.vae, args.image_size, args.out,
                          args.name, args.flip, args.batch_size, args.seed)
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'wrote TFDS dataset {name!r} in {args.out}')


if __name__ == '__main__':
  main()
