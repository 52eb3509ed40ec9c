# Command:  python train.py --config=configs/convnext_t.py --workdir=workdirs/convnext_t
# Expected: 82.1% top-1 on ImageNet-1k val at 224 (paper; timm's fb_in1k weights: 82.066).
# Epochs:   300 (20 warmup), batch 4096, AdamW lr 4e-3, wd 0.05, cosine to 1e-6, drop_path 0.1, label smoothing 0.1,
#           RandAugment rand-m9-mstd0.5-inc1, mixup 0.8 / cutmix 1.0, random erasing 0.25, EMA 0.9999 evaluated beside
#           the raw weights (facebookresearch/ConvNeXt TRAINING.md).
# Time:     ~1.0e19 training FLOPs (4.47 GMACs x 2 x 3 x 1.28M images x 300 epochs): about 10 h of pure compute on
#           8 x H100 at 30% bf16 MFU; depthwise convs and the input pipeline make real runs slower (estimate).
"""ConvNeXt-T on ImageNet-1k from scratch (facebookresearch/ConvNeXt TRAINING.md)."""
from ml_collections import config_dict

from configs import common


def get_config(arg=None):
  del arg
  c = common.imagenet(dict(name='convnext_t', drop_path=0.1, layer_scale=1e-6, kernel_size=7, depthwise_impl='auto',
                           dtype='bfloat16', remat=False),
                      batch_size=4096, epochs=300,
                      train=common.pp_train(224, randaug='randaugment()', erasing=0.25),
                      eval=common.pp_eval(224, crop_pct=0.875))
  epoch = common.steps_per_epoch(c.batch_size)
  c.optimizer = dict(name='adamw', learning_rate=4e-3, weight_decay=0.05, b1=0.9, b2=0.999,
                     grad_clip=config_dict.placeholder(float), warmup_steps=20 * epoch, schedule='cosine', end_lr=1e-6,
                     ema_decay=0.9999)
  c.label_smoothing = 0.1
  c.mixup = common.timm_mixup()
  return c
