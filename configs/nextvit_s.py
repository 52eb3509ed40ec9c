# Command:  python train.py --config=configs/nextvit_s.py --workdir=workdirs/nextvit_s
# Expected: 82.5% top-1 on ImageNet-1k val at 224 (Next-ViT paper, Table 3: Next-ViT-S, 31.7M params, 5.8 GMACs).
# Epochs:   300 (20 warmup), batch 2048, AdamW lr 2e-3 (5e-4 per 512 images), wd 0.1, cosine, drop_path 0.1, label
#           smoothing 0.1 (the paper's DeiT-style recipe; B and L use drop_path 0.2).
# Time:     ~1.3e19 training FLOPs (5.8 GMACs x 2 x 3 x 1.28M images x 300 epochs): about 14 h of pure compute on
#           8 x H100 at 30% bf16 MFU (estimate; BatchNorm and the grouped convs make real runs slower).
# Augmentation: RandAugment rand-m9-mstd0.5-inc1, mixup 0.8 / cutmix 1.0, random erasing 0.25, random-resized
# crop (bicubic); timm's colour jitter is off whenever RandAugment is on.
"""Next-ViT-S on ImageNet-1k from scratch (bytedance/Next-ViT)."""
from ml_collections import config_dict

from configs import common


def get_config(arg=None):
  del arg
  c = common.imagenet(dict(name='nextvit_small', drop_path=0.1, attn_impl='auto', dtype='bfloat16', remat=False),
                      batch_size=2048, epochs=300,
                      train=common.pp_train(224, randaug='randaugment()', erasing=0.25),
                      eval=common.pp_eval(224, crop_pct=0.95))
  epoch = common.steps_per_epoch(c.batch_size)
  c.optimizer = dict(name='adamw', learning_rate=2e-3, weight_decay=0.1, b1=0.9, b2=0.999,
                     grad_clip=config_dict.placeholder(float), warmup_steps=20 * epoch, schedule='cosine', end_lr=1e-6)
  c.label_smoothing = 0.1
  c.mixup = common.timm_mixup()
  return c
