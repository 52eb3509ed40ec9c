# Command:  python train.py --config=configs/inception_next_t.py --workdir=workdirs/inception_next_t
# Expected: 82.3% top-1 on ImageNet-1k val at 224 (InceptionNeXt paper / sail-sg/inceptionnext README; timm
#           inception_next_tiny.sail_in1k) with the full recipe below.
# Epochs:   300 (20 warmup), batch 4096, AdamW lr 4e-3, wd 0.05, cosine to 1e-5, drop_path 0.1 (small 0.3, base 0.4),
#           label smoothing 0.1, mixup 0.8 / cutmix 1.0 (sail-sg/inceptionnext
#           scripts/inceptionnext/train_inceptionnext_tiny.sh and its train.py defaults).
# Time:     ~1e19 training FLOPs (~4.2 GMACs x 2 x 3 x 1.28M images x 300 epochs): about 1.1 h of pure compute on
#           8 x H100 at 30% bf16 MFU (estimate; depthwise convs and BatchNorm are memory-bound: real runs are slower).
# BatchNorm statistics are those of the global batch (synchronised), as under jit they always are.
# Augmentation: RandAugment rand-m9-mstd0.5-inc1, mixup 0.8 / cutmix 1.0, random erasing 0.25, random-resized
# crop (bicubic); timm's colour jitter is off whenever RandAugment is on.
"""InceptionNeXt-T on ImageNet-1k from scratch (Yu et al. 2024, InceptionNeXt: When Inception Meets ConvNeXt)."""
from ml_collections import config_dict

from configs import common


def get_config(arg=None):
  del arg
  c = common.imagenet(dict(name='inception_next_t', drop_path=0.1, dtype='bfloat16', remat=False),
                      batch_size=4096, epochs=300,
                      train=common.pp_train(224, randaug='randaugment()', erasing=0.25),
                      eval=common.pp_eval(224, crop_pct=0.875))
  epoch = common.steps_per_epoch(c.batch_size)
  c.optimizer = dict(name='adamw', learning_rate=4e-3, weight_decay=0.05, b1=0.9, b2=0.999,
                     grad_clip=config_dict.placeholder(float), warmup_steps=20 * epoch, schedule='cosine', end_lr=1e-5)
  c.label_smoothing = 0.1
  c.mixup = common.timm_mixup()
  return c
