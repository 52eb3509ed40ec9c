# Command:  python train.py --config=configs/poolformer_s12.py --workdir=workdirs/poolformer_s12
# Expected: 77.2% top-1 on ImageNet-1k val at 224 (sail-sg/poolformer README; timm poolformer_s12.sail_in1k) with the
#           full recipe below.
# Epochs:   300 (5 warmup), batch 1024, AdamW lr 1e-3 (lr = 1e-3 x batch / 1024), wd 0.05, cosine to 1e-5,
#           drop_path 0.1 (s24 0.1, s36 0.2, m36 0.3, m48 0.4), label smoothing 0.1, mixup 0.8 / cutmix 1.0
#           (sail-sg/poolformer README and its timm train.py defaults).
# Time:     ~4e18 training FLOPs (~1.8 GMACs x 2 x 3 x 1.28M images x 300 epochs): about 0.5 h of pure compute on
#           8 x H100 at 30% bf16 MFU (estimate; GroupNorm and pooling are memory-bound, real runs are slower).
# Not yet in this codebase: RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, color jitter 0.4; without them
# expect a lower top-1.
"""PoolFormer-S12 on ImageNet-1k from scratch (Yu et al. 2022, MetaFormer is Actually What You Need for Vision)."""
import ml_collections

from vision_models import parallel

IMAGENET_TRAIN = 1_281_167


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(name='poolformer_s12', drop_path=0.1, dtype='bfloat16', remat=False)
  c.data = dict(
      name='imagenet2012', data_dir=None, train_split='train', eval_split='validation',
      image_size=224, channels=3, shuffle_buffer=250_000,
      pp_train='decode|inception_crop(224, method="bicubic")|flip_lr|normalize()|keep("image", "label")',
      # timm eval for poolformer_s12: crop_pct 0.9 (248 → 224), bicubic, ImageNet mean/std.
      pp_eval='decode|resize(248, method="bicubic")|central_crop(224)|normalize()|keep("image", "label")')
  c.batch_size = 1024
  epoch = IMAGENET_TRAIN // c.batch_size
  c.total_steps = 300 * epoch
  c.optimizer = dict(name='adamw', learning_rate=1e-3 * c.batch_size / 1024, weight_decay=0.05, b1=0.9, b2=0.999,
                     grad_clip=None, warmup_steps=5 * epoch, schedule='cosine', end_lr=1e-5)
  c.label_smoothing = 0.1
  c.mixup = dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0)
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sharding_rules = parallel.DEFAULT_RULES
  c.log_every = 100
  c.eval_every = 5 * epoch
  c.checkpoint_every = epoch
  c.keep_checkpoints = 3
  return c
