# Command:  python train.py --config=configs/maxvit_t.py --workdir=gs://BUCKET/maxvit_t   (TPU v3-32 / 8×A100 or more)
# Expected: MaxViT-T on ImageNet-1k from scratch at 224 px, the official recipe (google-research/maxvit
#           maxvit/models/hp/vision_i1k.py `MaxViTTiny`): 300 epochs, batch 4096, top-1 83.62% (official README;
#           timm's port of those weights scores 83.43%). Roughly a day on 8×A100 (an estimate, not measured).
# Needs imagenet2012 prepared with TFDS (train.py says how when it is not).
"""MaxViT-T on ImageNet-1k, the official recipe: AdamW (weight decay 0.05, not on biases and norm scales or the
relative position tables), lr 3e-3 with 10k warmup steps and cosine decay to 1e-5, grad clip 1, label smoothing 0.1,
stochastic depth 0.2 (survival 0.8), BatchNorm momentum 0.99 (the model's). The official pipeline also uses
RandAugment(2, 15), mixup 0.8 and an EMA of the weights (decay 0.9999); add them with `config.data.pp_train` /
`config.mixup` / `config.ema` once the input pipeline and trainer have them. Fine-tuning at 384 or 512 px: set
`model.image_size` and `data.image_size` (window 12 or 16), 30 epochs, batch 512, constant lr 5e-5, wd 1e-8."""
import ml_collections

from vision_models import parallel

IMAGENET_TRAIN_EXAMPLES = 1_281_167


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(name='maxvit_t', image_size=224, drop_path=0.2, attn_impl='auto', remat=False)
  c.data = dict(
      name='imagenet2012', data_dir=None, train_split='train', eval_split='validation',
      image_size=224, channels=3, shuffle_buffer=250_000,
      pp_train='decode|inception_crop(224)|flip_lr|normalize|keep("image", "label")',
      # timm's eval transform for maxvit_*_tf_224: crop_pct 0.95 (235 = floor(224 / 0.95)), bicubic, ImageNet stats.
      pp_eval='decode|resize_small(235, "bicubic")|central_crop(224)|normalize|keep("image", "label")')
  c.batch_size = 4096
  epochs = 300
  c.total_steps = epochs * IMAGENET_TRAIN_EXAMPLES // c.batch_size
  # optax.adamw multiplies the decay by the learning rate, as the official (TF Model Garden) AdamW does.
  c.optimizer = dict(name='adamw', learning_rate=3e-3, weight_decay=0.05, b1=0.9, b2=0.999, grad_clip=1.0,
                     warmup_steps=10_000, schedule='cosine', end_lr=1e-5)
  c.label_smoothing = 0.1
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sharding_rules = parallel.DEFAULT_RULES
  c.log_every = 100
  c.eval_every = 2_500
  c.checkpoint_every = 1_000
  c.keep_checkpoints = 3
  return c
