# Command:  python train.py --config=configs/maxvit_t_ft384.py --workdir=gs://BUCKET/maxvit_t_384 \
#             --config.init_from.workdir=gs://BUCKET/maxvit_t      (a finished configs/maxvit_t.py run at 224 px)
# Expected: MaxViT-T fine-tuned at 384 px: top-1 85.24% (official README; timm maxvit_tiny_tf_384.in1k: 85.11).
#           30 epochs at batch 512 (official `MaxViTTiny` fine-tuning hparams): about 10 h on 8×A100 (estimate).
"""MaxViT-T fine-tuning at 384 px (google-research/maxvit): windows and grids of 12 (image size / 32), the relative
position tables resampled from 13×13 to 23×23, AdamW lr 5e-5 constant, weight decay 1e-8 (scaled by the lr, as the
official AdamW), label smoothing 0.1, EMA 0.9999, stochastic depth 0.2, inception crop + flip + RandAugment(2, 15),
mixup α 0.8."""
from ml_collections import config_dict

from configs import common


def get_config(arg=None):
  del arg
  c = common.imagenet(dict(name='maxvit_t', image_size=384, drop_path=0.2, attn_impl='auto', remat=False),
                      batch_size=512, epochs=30, image_size=384,
                      train=common.pp_train(384, crop='inception_crop', randaug=common.big_vision_randaug(2, 15)),
                      eval=common.pp_eval(384, crop_pct=1.0))
  c.init_from = dict(workdir=config_dict.placeholder(str), use_ema=True)
  c.optimizer = dict(name='adamw', learning_rate=5e-5, weight_decay=1e-8, b1=0.9, b2=0.999, grad_clip=1.0,
                     warmup_steps=0, schedule='constant', ema_decay=0.9999)
  c.label_smoothing = 0.1
  c.mixup = dict(mixup_alpha=0.8, cutmix_alpha=0.0, prob=1.0)
  return c
