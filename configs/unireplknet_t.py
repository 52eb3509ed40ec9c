# Command:  python train.py --config=configs/unireplknet_t.py --workdir=workdirs/unireplknet_t
# Expected: 83.2% top-1 on ImageNet-1k val at 224 (UniRepLKNet paper; the official checkpoint is
#           unireplknet_t_in1k_224_acc83.21) with the full recipe below; evaluate the re-parameterised form
#           (`models.unireplknet.reparameterize`), which gives the same logits.
# Epochs:   300 (20 warmup), batch 4096 (4 GPUs x 128 x update_freq 8), AdamW lr 4e-3, wd 0.05, cosine to 1e-6,
#           drop_path 0.2, label smoothing 0.1 (AILab-CVC/UniRepLKNet Image/README.md and main.py defaults).
# Time:     ~1.1e19 training FLOPs (4.9 GMACs x 2 x 3 x 1.28M images x 300 epochs): about 11 h of pure compute on
#           8 x H100 at 30% bf16 MFU (estimate; the depthwise convs and BatchNorm make real runs slower).
#           depthwise_impl='pallas' runs the large kernels with the Pallas depthwise kernel on GPUs/TPUs.
# Augmentation: RandAugment rand-m9-mstd0.5-inc1, mixup 0.8 / cutmix 1.0, random erasing 0.25, random-resized
# crop (bicubic); timm's colour jitter is off whenever RandAugment is on.
"""UniRepLKNet-T on ImageNet-1k from scratch (AILab-CVC/UniRepLKNet), trained in its re-parameterisable form."""
from ml_collections import config_dict

from configs import common


def get_config(arg=None):
  del arg
  c = common.imagenet(dict(name='unireplknet_t', drop_path=0.2, layer_scale=1e-6, depthwise_impl='auto',
                           dtype='bfloat16', remat=False),
                      batch_size=4096, epochs=300,
                      train=common.pp_train(224, randaug='randaugment()', erasing=0.25),
                      eval=common.pp_eval(224, crop_pct=0.875))
  epoch = common.steps_per_epoch(c.batch_size)
  c.optimizer = dict(name='adamw', learning_rate=4e-3, weight_decay=0.05, b1=0.9, b2=0.999,
                     grad_clip=config_dict.placeholder(float), warmup_steps=20 * epoch, schedule='cosine', end_lr=1e-6)
  c.label_smoothing = 0.1
  c.mixup = common.timm_mixup()
  return c
