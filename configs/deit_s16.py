# Command:  python train.py --config=configs/deit_s16.py --workdir=workdirs/deit_s16
# Expected: 79.9% top-1 on ImageNet-1k val at 224 (DeiT README_deit.md; timm deit_small_patch16_224.fb_in1k: 79.856)
#           with the full recipe below.
# Epochs:   300 (5 warmup), batch 1024, AdamW lr 5e-4 x 1024/512 = 1e-3, wd 0.05, cosine to 1e-5, drop_path 0.1,
#           label smoothing 0.1 (facebookresearch/deit main.py defaults).
# Time:     ~1.1e19 training FLOPs (4.61 GMACs x 6 x 1.28M x 300): about 10 h of pure compute on 8 x H100 at 30% bf16
#           MFU (estimate).
# Not yet in this codebase: RandAugment rand-m9-mstd0.5-inc1, mixup 0.8 / cutmix 1.0, random erasing 0.25, repeated
# augmentation, EMA 0.99996, the inception crop (bicubic); without them DeiT-S overfits and lands well below 79.9.
# The model is our `vit_s16` (DeiT-S is ViT-S/16; the distilled variant is `deit_s16_distilled`, which needs a teacher).
"""DeiT-S/16 on ImageNet-1k from scratch (facebookresearch/deit)."""
import ml_collections

from vision_models import parallel

IMAGENET_TRAIN = 1_281_167


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(name='vit_s16', drop_path=0.1, dropout=0.0, attn_impl='auto', dtype='bfloat16', remat=False)
  c.data = dict(
      name='imagenet2012', data_dir=None, train_split='train', eval_split='validation',
      image_size=224, channels=3, shuffle_buffer=250_000,
      pp_train='decode|resize(224, method="bicubic")|flip_lr|normalize()|keep("image", "label")',
      # timm eval for DeiT: crop_pct 0.9 (248 → 224), bicubic, ImageNet mean/std.
      pp_eval='decode|resize(248, method="bicubic")|central_crop(224)|normalize()|keep("image", "label")')
  c.batch_size = 1024
  epoch = IMAGENET_TRAIN // c.batch_size
  c.total_steps = 300 * epoch
  c.optimizer = dict(name='adamw', learning_rate=5e-4 * c.batch_size / 512, weight_decay=0.05, b1=0.9, b2=0.999,
                     grad_clip=None, warmup_steps=5 * epoch, schedule='cosine', end_lr=1e-5)
  c.label_smoothing = 0.1
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sharding_rules = parallel.DEFAULT_RULES
  c.log_every = 100
  c.eval_every = 5 * epoch
  c.checkpoint_every = epoch
  c.keep_checkpoints = 3
  return c
