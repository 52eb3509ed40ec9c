"""Pieces every ImageNet-1k recipe shares: the dataset section, timm-style preprocessing strings, the bookkeeping.

The recipes differ in their model, optimizer, augmentation and schedule; those stay in each config file, spelled out.
"""
import ml_collections
from ml_collections import config_dict

from vision_models import parallel

IMAGENET_TRAIN = 1_281_167
IMAGENET_MEAN_STD = 'normalize()'  # ImageNet mean/std (timm's default), as opposed to value_range(-1, 1).


def big_vision_randaug(num_layers: int, magnitude: int) -> str:
  """big_vision's `randaug(n, m)` (TF autoaugment): fixed magnitude m on the 0-10 level scale, not clipped at 10,
  posterize/solarize weaker as m grows, gray fill."""
  return (f'randaugment({num_layers}, {magnitude}, magnitude_std=0, magnitude_max={magnitude}, increasing=False, '
          'fill=(128, 128, 128))')


def _augment_ops(randaug: str, erasing: float, norm: str) -> list[str]:
  return ['flip_lr'] + ([randaug] if randaug else []) + [norm] + ([f'random_erasing({erasing})'] if erasing else [])


def pp_train(size: int, *, crop: str = 'random_resized_crop', randaug: str = '', erasing: float = 0.0,
             norm: str = IMAGENET_MEAN_STD) -> str:
  """random crop → flip → [RandAugment] → normalise → [random erasing] (timm's and DeiT's order). The crop takes the
  JPEG bytes and decodes only its window."""
  return '|'.join([f'{crop}({size})', *_augment_ops(randaug, erasing, norm), 'keep("image", "label")'])


def pp_train_on_device(size: int, *, crop: str = 'random_resized_crop', randaug: str = '', erasing: float = 0.0,
                       norm: str = IMAGENET_MEAN_STD) -> tuple[str, str]:
  """`pp_train`'s ops split for `config.data.pp_train` and `config.data.pp_device`: the host only decodes and crops
  (uint8), the train step flips, RandAugments, normalises and erases on the accelerator. A host core then feeds about
  2.4x more images per second (benchmarks/RESULTS.md), the choice for GPUs with few host cores per device."""
  return f'{crop}({size})|keep("image", "label")', '|'.join(_augment_ops(randaug, erasing, norm))


def pp_eval(size: int, crop_pct: float = 0.875, norm: str = IMAGENET_MEAN_STD, method: str = 'bicubic') -> str:
  """timm's eval transform: shorter side to size / crop_pct, central crop."""
  return f'decode|resize_center_crop({size}, crop_pct={crop_pct}, method="{method}")|{norm}|keep("image", "label")'


def steps_per_epoch(batch_size: int) -> int:
  return IMAGENET_TRAIN // batch_size


def imagenet(model: dict, *, batch_size: int, epochs: float, train: str | tuple[str, str], eval: str,
             image_size: int = 224, eval_every_epochs: int = 5) -> ml_collections.ConfigDict:
  """A config with the ImageNet-1k dataset, the model, the step counts and checkpointing; the caller adds
  `optimizer`, `label_smoothing` (0 here) and `mixup`. `train` is the host's spec, or (host, device) specs from
  `pp_train_on_device`."""
  train, device = (train, '') if isinstance(train, str) else train
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = model
  c.data = dict(name='imagenet2012', data_dir=config_dict.placeholder(str), train_split='train',
                eval_split='validation', image_size=image_size, channels=3, shuffle_buffer=250_000,
                pp_train=train, pp_device=device, pp_eval=eval)
  c.batch_size = batch_size
  epoch = steps_per_epoch(batch_size)
  c.total_steps = int(epochs * epoch)
  c.label_smoothing = 0.0
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sharding_rules = parallel.DEFAULT_RULES
  c.log_every = 100
  c.eval_every = min(eval_every_epochs * epoch, c.total_steps)
  c.checkpoint_every = min(epoch, 1_000)
  c.keep_checkpoints = 3
  return c


def timm_mixup(mixup: float = 0.8, cutmix: float = 1.0) -> dict:
  """timm's `--mixup 0.8 --cutmix 1.0`: one of the two per batch, always applied."""
  return dict(mixup_alpha=mixup, cutmix_alpha=cutmix, switch_prob=0.5, prob=1.0)
