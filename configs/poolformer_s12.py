# Command:  python train.py --config=configs/poolformer_s12.py --workdir=workdirs/poolformer_s12
# Expected: 77.2% top-1 on ImageNet-1k val at 224 (sail-sg/poolformer README; timm poolformer_s12.sail_in1k) with the
#           full recipe below.
# Epochs:   300 (5 warmup), batch 1024, AdamW lr 1e-3 (lr = 1e-3 x batch / 1024), wd 0.05, cosine to 1e-5,
#           drop_path 0.1 (s24 0.1, s36 0.2, m36 0.3, m48 0.4), label smoothing 0.1, mixup 0.8 / cutmix 1.0
#           (sail-sg/poolformer README and its timm train.py defaults).
# Time:     ~4e18 training FLOPs (~1.8 GMACs x 2 x 3 x 1.28M images x 300 epochs): about 0.5 h of pure compute on
#           8 x H100 at 30% bf16 MFU (estimate; GroupNorm and pooling are memory-bound, real runs are slower).
# Augmentation: RandAugment rand-m9-mstd0.5-inc1, mixup 0.8 / cutmix 1.0, random erasing 0.25, random-resized
# crop (bicubic); timm's colour jitter is off whenever RandAugment is on.
"""PoolFormer-S12 on ImageNet-1k from scratch (Yu et al. 2022, MetaFormer is Actually What You Need for Vision)."""
from ml_collections import config_dict

from configs import common


def get_config(arg=None):
  del arg
  c = common.imagenet(dict(name='poolformer_s12', drop_path=0.1, dtype='bfloat16', remat=False),
                      batch_size=1024, epochs=300,
                      train=common.pp_train(224, randaug='randaugment()', erasing=0.25),
                      eval=common.pp_eval(224, crop_pct=0.9))
  epoch = common.steps_per_epoch(c.batch_size)
  c.optimizer = dict(name='adamw', learning_rate=1e-3 * c.batch_size / 1024, weight_decay=0.05, b1=0.9, b2=0.999,
                     grad_clip=config_dict.placeholder(float), warmup_steps=5 * epoch, schedule='cosine', end_lr=1e-5)
  c.label_smoothing = 0.1
  c.mixup = common.timm_mixup()
  return c
