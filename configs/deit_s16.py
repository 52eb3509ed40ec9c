# Command:  python train.py --config=configs/deit_s16.py --workdir=workdirs/deit_s16
# Expected: 79.9% top-1 on ImageNet-1k val at 224 (DeiT README; timm deit_small_patch16_224.fb_in1k: 79.856).
# Epochs:   300 (5 warmup), batch 1024, AdamW lr 5e-4 x 1024/512 = 1e-3, wd 0.05, cosine to 1e-5, drop_path 0.1,
#           label smoothing 0.1, RandAugment rand-m9-mstd0.5-inc1, mixup 0.8 / cutmix 1.0, random erasing 0.25,
#           repeated augmentation x3, EMA 0.99996 (facebookresearch/deit main.py defaults).
# Time:     ~1.1e19 training FLOPs (4.61 GMACs x 6 x 1.28M x 300): about 10 h of pure compute on 8 x H100 at 30% bf16
#           MFU (estimate).
# The model is our `vit_s16` (DeiT-S is ViT-S/16; the distilled variant is `deit_s16_distilled`, which needs a teacher).
"""DeiT-S/16 on ImageNet-1k from scratch (facebookresearch/deit)."""
from ml_collections import config_dict

from configs import common


def get_config(arg=None):
  del arg
  c = common.imagenet(dict(name='vit_s16', drop_path=0.1, dropout=0.0, attn_impl='auto', dtype='bfloat16'),
                      batch_size=1024, epochs=300,
                      train=common.pp_train(224, randaug='randaugment()', erasing=0.25),
                      eval=common.pp_eval(224, crop_pct=0.875))
  c.data.repeated_aug = 3
  epoch = common.steps_per_epoch(c.batch_size)
  c.optimizer = dict(name='adamw', learning_rate=5e-4 * c.batch_size / 512, weight_decay=0.05, b1=0.9, b2=0.999,
                     grad_clip=config_dict.placeholder(float), warmup_steps=5 * epoch, schedule='cosine', end_lr=1e-5,
                     ema_decay=0.99996)
  c.label_smoothing = 0.1
  c.mixup = common.timm_mixup()
  return c
