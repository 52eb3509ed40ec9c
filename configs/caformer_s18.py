# Command:  python train.py --config=configs/caformer_s18.py --workdir=workdirs/caformer_s18
# Expected: 83.6% top-1 on ImageNet-1k val at 224 (MetaFormer Baselines paper / sail-sg/metaformer README; timm
#           caformer_s18.sail_in1k) with the full recipe below.
# Epochs:   300 (20 warmup), batch 4096, LAMB lr 8e-3, wd 0.05, cosine to 1e-5, drop_path 0.15, head dropout 0,
#           label smoothing 0.1, mixup 0.8 / cutmix 1.0 (sail-sg/metaformer scripts/caformer/train_caformer_s18.sh
#           and its train.py defaults).
# Time:     ~9e18 training FLOPs (~4.1 GMACs x 2 x 3 x 1.28M images x 300 epochs): about 1 h of pure compute on
#           8 x H100 at 30% bf16 MFU (estimate; the 7x7 depthwise convs are memory-bound: real runs are slower).
# Augmentation: RandAugment rand-m9-mstd0.5-inc1, mixup 0.8 / cutmix 1.0, random erasing 0.25, random-resized
# crop (bicubic); timm's colour jitter is off whenever RandAugment is on.
"""CAFormer-S18 on ImageNet-1k from scratch (Yu et al. 2023, MetaFormer Baselines for Vision)."""
from ml_collections import config_dict

from configs import common


def get_config(arg=None):
  del arg
  c = common.imagenet(dict(name='caformer_s18', drop_path=0.15, head_dropout=0.0, attn_impl='auto', dtype='bfloat16',
                           remat=False),
                      batch_size=4096, epochs=300,
                      train=common.pp_train(224, randaug='randaugment()', erasing=0.25),
                      eval=common.pp_eval(224, crop_pct=1.0))
  epoch = common.steps_per_epoch(c.batch_size)
  c.optimizer = dict(name='lamb', learning_rate=8e-3, weight_decay=0.05, b1=0.9, b2=0.999,
                     grad_clip=config_dict.placeholder(float), warmup_steps=20 * epoch, schedule='cosine', end_lr=1e-5)
  c.label_smoothing = 0.1
  c.mixup = common.timm_mixup()
  return c
