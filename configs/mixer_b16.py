# Command:  python train.py --config=configs/mixer_b16.py --workdir=workdirs/mixer_b16
# Expected: 76.3% top-1 on ImageNet-1k val at 224 after 300 epochs (big_vision configs/mlp_mixer_i1k.py docstring,
#           "TPU v3-128, 2h11m" there; the MLP-Mixer paper: 76.44).
# Epochs:   300, batch 4096, Adam lr 1e-3 with 10k warmup steps then linear decay to 1e-5, grad clip 1.0, weight
#           decay 1e-4 decoupled from the lr in big_vision = 0.1 in optax's lr-coupled adamw, stochastic depth 0.1.
# Time:     ~2.9e19 training FLOPs (12.62 GMACs x 6 x 1.28M x 300): about 30 h of pure compute on 8 x H100 at 30%
#           bf16 MFU (estimate).
# Differences from big_vision, not yet in this codebase: sigmoid cross-entropy with head bias -6.9 (we use softmax
# cross-entropy), RandAugment (2, 15), mixup p=0.5, the inception crop; pp_train uses the ops that exist.
"""Mixer-B/16 on ImageNet-1k from scratch (big_vision configs/mlp_mixer_i1k.py)."""
import ml_collections

from vision_models import parallel

IMAGENET_TRAIN = 1_281_167


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(name='mixer_b16', drop_path=0.1, dtype='bfloat16', remat=False)
  c.data = dict(
      name='imagenet2012', data_dir=None, train_split='train', eval_split='validation',
      image_size=224, channels=3, shuffle_buffer=250_000,
      pp_train='decode|resize(224)|flip_lr|value_range(-1, 1)|keep("image", "label")',
      # timm eval for mixer_b16_224: crop_pct 0.875, mean = std = 0.5 ([-1, 1]).
      pp_eval='decode|resize(256, method="bicubic")|central_crop(224)|value_range(-1, 1)|keep("image", "label")')
  c.batch_size = 4096
  c.total_steps = 300 * IMAGENET_TRAIN // c.batch_size
  c.optimizer = dict(name='adamw', learning_rate=1e-3, weight_decay=0.1, b1=0.9, b2=0.999, grad_clip=1.0,
                     warmup_steps=10_000, schedule='linear', end_lr=1e-5)
  c.label_smoothing = 0.0
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sharding_rules = parallel.DEFAULT_RULES
  c.log_every = 100
  c.eval_every = 5_000
  c.checkpoint_every = 1_000
  c.keep_checkpoints = 3
  return c
