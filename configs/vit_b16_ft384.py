# Command:  python train.py --config=configs/vit_b16_ft384.py --workdir=gs://BUCKET/vit_b16_384 \
#             --config.init_from.workdir=gs://BUCKET/vit_b16        (a finished configs/vit_b16.py run at 224 px)
# Expected: ViT-B/16 fine-tuned at 384 px on ImageNet-1k: top-1 81.1% (timm vit_base_patch16_384.augreg_in1k, from the
#           79.15% AugReg run at 224). 20k steps at batch 512: about 6 h on a TPU v3-32 (estimate).
"""ViT-B/16 fine-tuning at 384 px (AugReg / vision_transformer fine-tuning): the position embedding resampled from the
224 px grid (14×14 → 24×24), SGD with momentum 0.9 and no weight decay, lr 0.01 with 500 warmup steps then cosine,
grad clip 1, inception crop + flip, no mixup; evaluated on the full 384 px image."""
from ml_collections import config_dict

from configs import common


def get_config(arg=None):
  del arg
  c = common.imagenet(dict(name='vit_b16', pool='token', posemb='learn', dropout=0.0, drop_path=0.0, attn_impl='auto',
                           mlp='mlp_tanh'),  # as the configs/vit_b16.py run it starts from
                      batch_size=512, epochs=20_000 * 512 / common.IMAGENET_TRAIN, image_size=384,
                      train=common.pp_train(384, crop='inception_crop', norm='value_range(-1, 1)'),
                      eval='decode|resize(384)|value_range(-1, 1)|keep("image", "label")')
  c.init_from = dict(workdir=config_dict.placeholder(str), use_ema=True)
  c.optimizer = dict(name='sgd', learning_rate=0.01, momentum=0.9, weight_decay=0.0, grad_clip=1.0, warmup_steps=500,
                     schedule='cosine', end_lr=0.0)
  c.eval_every = 2_000
  return c
