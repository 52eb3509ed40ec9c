# Command:  python train.py --config=configs/nextvit_s.py --workdir=workdirs/nextvit_s
# Expected: 82.5% top-1 on ImageNet-1k val at 224 (Next-ViT paper, Table 3: Next-ViT-S, 31.7M params, 5.8 GMACs).
# Epochs:   300 (20 warmup), batch 2048, AdamW lr 2e-3 (5e-4 per 512 images), wd 0.1, cosine, drop_path 0.1, label
#           smoothing 0.1 (the paper's DeiT-style recipe; B and L use drop_path 0.2).
# Time:     ~1.3e19 training FLOPs (5.8 GMACs x 2 x 3 x 1.28M images x 300 epochs): about 14 h of pure compute on
#           8 x H100 at 30% bf16 MFU (estimate; BatchNorm and the grouped convs make real runs slower).
# Not yet in this codebase (the paper's recipe also has them): RandAugment, mixup 0.8 / cutmix 1.0, random erasing
# 0.25 and the inception crop; without them expect a lower top-1. pp_train below uses the ops that exist.
"""Next-ViT-S on ImageNet-1k from scratch (bytedance/Next-ViT)."""
import ml_collections

from vision_models import parallel

IMAGENET_TRAIN = 1_281_167


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(name='nextvit_small', drop_path=0.1, attn_impl='auto', dtype='bfloat16', remat=False)
  c.data = dict(
      name='imagenet2012', data_dir=None, train_split='train', eval_split='validation',
      image_size=224, channels=3, shuffle_buffer=250_000,
      pp_train='decode|resize(224, method="bicubic")|flip_lr|normalize()|keep("image", "label")',
      # timm eval: crop_pct 0.95, bicubic, ImageNet mean/std.
      pp_eval='decode|resize(236, method="bicubic")|central_crop(224)|normalize()|keep("image", "label")')
  c.batch_size = 2048
  epoch = IMAGENET_TRAIN // c.batch_size
  c.total_steps = 300 * epoch
  c.optimizer = dict(name='adamw', learning_rate=2e-3, weight_decay=0.1, b1=0.9, b2=0.999, grad_clip=None,
                     warmup_steps=20 * epoch, schedule='cosine', end_lr=1e-6)
  c.label_smoothing = 0.1
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sharding_rules = parallel.DEFAULT_RULES
  c.log_every = 100
  c.eval_every = 5 * epoch
  c.checkpoint_every = epoch
  c.keep_checkpoints = 3
  return c
