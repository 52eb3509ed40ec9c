# Command:  python train.py --config=configs/vit_b16.py --workdir=gs://BUCKET/vit_b16   (TPU v3-32 / 8×A100 or more)
#           GPU hosts with few cores per GPU: --config=configs/vit_b16.py:device_augment (RandAugment in the step;
#           the host then decodes and crops 503 images/s per core, 2.4x more, benchmarks/RESULTS.md).
# Expected: ViT-B/16 on ImageNet-1k from scratch, AugReg recipe (big_vision configs/vit_i1k.py, "medium2"): 300 epochs,
#           batch 4096, top-1 79.15% at 224 px (timm's augreg_in1k row). About 1.5 days on a TPU v3-32 (estimate).
# Needs imagenet2012 prepared with TFDS (train.py says how when it is not).
"""ViT-B/16 on ImageNet-1k, the AugReg recipe: Adam (decoupled weight decay 1e-4), 10k warmup, cosine, grad clip 1,
inception crop + flip + RandAugment(2, 15), mixup α 0.5, inputs in [-1, 1], eval at resize 256 → crop 224."""
from configs import common

ARGS = (None, '', 'device_augment')


def get_config(arg=None):
  if arg not in ARGS:
    raise ValueError(f'configs/vit_b16.py takes no argument or "device_augment", not {arg!r}')
  split = common.pp_train_on_device if arg == 'device_augment' else common.pp_train
  # mlp_tanh: big_vision's MLP uses flax's tanh GELU (timm's exact GELU is 4% slower on an H100, RESULTS.md).
  c = common.imagenet(dict(name='vit_b16', pool='token', posemb='learn', dropout=0.0, drop_path=0.1, attn_impl='auto',
                           mlp='mlp_tanh'),
                      batch_size=4096, epochs=300,
                      train=split(224, crop='inception_crop', randaug=common.big_vision_randaug(2, 15),
                                  norm='value_range(-1, 1)'),
                      eval='decode|resize_small(256)|central_crop(224)|value_range(-1, 1)|keep("image", "label")')
  # optax.adamw multiplies the decay by the learning rate: 0.1 × 1e-3 = big_vision's decoupled wd 1e-4.
  c.optimizer = dict(name='adamw', learning_rate=1e-3, weight_decay=0.1, b1=0.9, b2=0.999, grad_clip=1.0,
                     warmup_steps=10_000, schedule='cosine', end_lr=0.0, mu_dtype='bfloat16')
  c.mixup = dict(mixup_alpha=0.5, cutmix_alpha=0.0, prob=1.0)
  c.eval_every = 2_500
  return c
