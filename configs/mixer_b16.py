# Command:  python train.py --config=configs/mixer_b16.py --workdir=workdirs/mixer_b16
# Expected: 76.3% top-1 on ImageNet-1k val at 224 after 300 epochs (big_vision configs/mlp_mixer_i1k.py docstring,
#           "TPU v3-128, 2h11m" there; the MLP-Mixer paper: 76.44).
# Epochs:   300, batch 4096, Adam lr 1e-3 with 10k warmup steps then linear decay to 1e-5, grad clip 1.0, weight
#           decay 1e-4 decoupled from the lr in big_vision = 0.1 in optax's lr-coupled adamw, stochastic depth 0.1,
#           inception crop + flip + RandAugment(2, 15), mixup α 0.5.
# Time:     ~2.9e19 training FLOPs (12.62 GMACs x 6 x 1.28M x 300): about 30 h of pure compute on 8 x H100 at 30%
#           bf16 MFU (estimate).
# Difference from big_vision: sigmoid cross-entropy with head bias -6.9 there, softmax cross-entropy here.
"""Mixer-B/16 on ImageNet-1k from scratch (big_vision configs/mlp_mixer_i1k.py)."""
from configs import common


def get_config(arg=None):
  del arg
  c = common.imagenet(dict(name='mixer_b16', drop_path=0.1, dtype='bfloat16', remat=False),
                      batch_size=4096, epochs=300,
                      train=common.pp_train(224, crop='inception_crop', randaug=common.big_vision_randaug(2, 15),
                                            norm='value_range(-1, 1)'),
                      # timm eval for mixer_b16_224: crop_pct 0.875, mean = std = 0.5 ([-1, 1]).
                      eval=common.pp_eval(224, crop_pct=0.875, norm='value_range(-1, 1)'))
  c.optimizer = dict(name='adamw', learning_rate=1e-3, weight_decay=0.1, b1=0.9, b2=0.999, grad_clip=1.0,
                     warmup_steps=10_000, schedule='linear', end_lr=1e-5)
  c.mixup = dict(mixup_alpha=0.5, cutmix_alpha=0.0, prob=1.0)
  return c
