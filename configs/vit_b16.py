# Command:  python train.py --config=configs/vit_b16.py --workdir=gs://BUCKET/vit_b16   (TPU v3-32 / 8×A100 or more)
# Expected: ViT-B/16 on ImageNet-1k from scratch, AugReg recipe (big_vision configs/vit_i1k.py): 300 epochs, batch
#           4096, top-1 79.15% at 224 px (timm's augreg_in1k row; 78.84% for S/16). About 1.5 days on a TPU v3-32.
# Needs imagenet2012 prepared with TFDS (train.py says how when it is not).
"""ViT-B/16 on ImageNet-1k, the AugReg recipe: Adam (decoupled weight decay 1e-4), 10k warmup, cosine, grad clip 1,
inception crop + flip. AugReg's 'medium2' level adds RandAugment(2, 15) and mixup 0.5 once the input pipeline has them
(`config.data.pp_train` / `config.mixup`)."""
import ml_collections
from ml_collections import config_dict

from vision_models import parallel

IMAGENET_TRAIN_EXAMPLES = 1_281_167


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(name='vit_b16', pool='token', posemb='learn', dropout=0.0, drop_path=0.1, attn_impl='auto')
  c.data = dict(
      name='imagenet2012', data_dir=config_dict.placeholder(str), train_split='train', eval_split='validation',
      image_size=224, channels=3, shuffle_buffer=250_000,
      pp_train='decode|inception_crop(224)|flip_lr|value_range(-1, 1)|keep("image", "label")',
      pp_eval='decode|resize_small(256)|central_crop(224)|value_range(-1, 1)|keep("image", "label")')
  c.batch_size = 4096
  epochs = 300
  c.total_steps = epochs * IMAGENET_TRAIN_EXAMPLES // c.batch_size
  # optax.adamw multiplies the decay by the learning rate: 0.1 × 1e-3 = big_vision's decoupled wd 1e-4.
  c.optimizer = dict(name='adamw', learning_rate=1e-3, weight_decay=0.1, b1=0.9, b2=0.999, grad_clip=1.0,
                     warmup_steps=10_000, schedule='cosine', end_lr=0.0)
  c.label_smoothing = 0.0
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sharding_rules = parallel.DEFAULT_RULES
  c.log_every = 100
  c.eval_every = 2_500
  c.checkpoint_every = 1_000
  c.keep_checkpoints = 3
  return c
