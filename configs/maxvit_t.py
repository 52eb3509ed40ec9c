# Command:  python train.py --config=configs/maxvit_t.py --workdir=gs://BUCKET/maxvit_t   (TPU v3-32 / 8×A100 or more)
# Expected: MaxViT-T on ImageNet-1k from scratch at 224 px, the official recipe (google-research/maxvit
#           maxvit/models/hp/vision_i1k.py `MaxViTTiny`): 300 epochs, batch 4096, top-1 83.62% (official README;
#           timm's port of those weights scores 83.43%). Roughly a day on 8×A100 (an estimate, not measured).
# Needs imagenet2012 prepared with TFDS (train.py says how when it is not).
"""MaxViT-T on ImageNet-1k, the official recipe: AdamW (weight decay 0.05, not on biases and norm scales or the
relative position tables), lr 3e-3 with 10k warmup steps and cosine decay to 1e-5, grad clip 1, label smoothing 0.1,
stochastic depth 0.2 (survival 0.8), BatchNorm momentum 0.99 (the model's), inception crop + flip + RandAugment(2, 15),
mixup α 0.8, EMA of the weights 0.9999."""
from configs import common


def get_config(arg=None):
  del arg
  c = common.imagenet(dict(name='maxvit_t', image_size=224, drop_path=0.2, attn_impl='auto', remat=False),
                      batch_size=4096, epochs=300,
                      train=common.pp_train(224, crop='inception_crop', randaug=common.big_vision_randaug(2, 15)),
                      # timm's eval transform for maxvit_*_tf_224: crop_pct 0.95, bicubic, ImageNet statistics.
                      eval=common.pp_eval(224, crop_pct=0.95))
  # optax.adamw multiplies the decay by the learning rate, as the official (TF Model Garden) AdamW does.
  c.optimizer = dict(name='adamw', learning_rate=3e-3, weight_decay=0.05, b1=0.9, b2=0.999, grad_clip=1.0,
                     warmup_steps=10_000, schedule='cosine', end_lr=1e-5, ema_decay=0.9999)
  c.label_smoothing = 0.1
  c.mixup = dict(mixup_alpha=0.8, cutmix_alpha=0.0, prob=1.0)
  c.eval_every = 2_500
  return c
