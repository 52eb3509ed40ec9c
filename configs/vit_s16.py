# Command:  python train.py --config=configs/vit_s16.py --workdir=gs://BUCKET/vit_s16   (TPU v3-8 / 8×A100)
# Expected: ViT-S/16 on ImageNet-1k from scratch, "Better plain ViT baselines for ImageNet-1k" (Beyer, Zhai,
#           Kolesnikov 2022; big_vision configs/vit_s16_i1k.py): top-1 76.5% after 90 epochs (about 7 h on a TPU v3-8),
#           78.5% after 150 and 80.0% after 300 (`arg='300ep'`), batch 1024.
# Needs imagenet2012 prepared with TFDS (train.py says how when it is not).
"""ViT-S/16, the plain-ViT baseline: global average pooling, fixed 2-D sin-cos position embedding, zero-init head,
no dropout or stochastic depth, inception crop + flip + RandAugment(2, 10), mixup α 0.2, Adam with decoupled weight
decay 1e-4, 10k warmup steps then cosine, batch 1024."""
from configs import common


EPOCHS = {None: 90, '': 90, '90ep': 90, '150ep': 150, '300ep': 300}


def get_config(arg=None):
  if arg not in EPOCHS:
    raise ValueError(f'configs/vit_s16.py takes no argument, "90ep", "150ep" or "300ep", not {arg!r}')
  epochs = EPOCHS[arg]
  c = common.imagenet(dict(name='vit_s16', pool='gap', posemb='sincos2d', fc_norm=False, dropout=0.0, drop_path=0.0,
                           attn_impl='auto', mlp='mlp_tanh'),  # big_vision's MLP: flax's tanh GELU
                      batch_size=1024, epochs=epochs,
                      train=common.pp_train(224, crop='inception_crop', randaug=common.big_vision_randaug(2, 10),
                                            norm='value_range(-1, 1)'),
                      eval='decode|resize_small(256)|central_crop(224)|value_range(-1, 1)|keep("image", "label")')
  c.optimizer = dict(name='adamw', learning_rate=1e-3, weight_decay=0.1, b1=0.9, b2=0.999, grad_clip=1.0,
                     warmup_steps=10_000, schedule='cosine', end_lr=0.0)
  c.mixup = dict(mixup_alpha=0.2, cutmix_alpha=0.0, prob=1.0)
  return c
