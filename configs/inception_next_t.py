# Command:  python train.py --config=configs/inception_next_t.py --workdir=workdirs/inception_next_t
# Expected: 82.3% top-1 on ImageNet-1k val at 224 (InceptionNeXt paper / sail-sg/inceptionnext README; timm
#           inception_next_tiny.sail_in1k) with the full recipe below.
# Epochs:   300 (20 warmup), batch 4096, AdamW lr 4e-3, wd 0.05, cosine to 1e-5, drop_path 0.1 (small 0.3, base 0.4),
#           label smoothing 0.1, mixup 0.8 / cutmix 1.0 (sail-sg/inceptionnext
#           scripts/inceptionnext/train_inceptionnext_tiny.sh and its train.py defaults).
# Time:     ~1e19 training FLOPs (~4.2 GMACs x 2 x 3 x 1.28M images x 300 epochs): about 1.1 h of pure compute on
#           8 x H100 at 30% bf16 MFU (estimate; depthwise convs and BatchNorm are memory-bound: real runs are slower).
# BatchNorm statistics are those of the global batch (synchronised), as under jit they always are.
# Not yet in this codebase: RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, color jitter 0.4; without them
# expect a lower top-1.
"""InceptionNeXt-T on ImageNet-1k from scratch (Yu et al. 2024, InceptionNeXt: When Inception Meets ConvNeXt)."""
import ml_collections

from vision_models import parallel

IMAGENET_TRAIN = 1_281_167


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(name='inception_next_t', drop_path=0.1, dtype='bfloat16', remat=False)
  c.data = dict(
      name='imagenet2012', data_dir=None, train_split='train', eval_split='validation',
      image_size=224, channels=3, shuffle_buffer=250_000,
      pp_train='decode|inception_crop(224, method="bicubic")|flip_lr|normalize()|keep("image", "label")',
      # timm eval for InceptionNeXt: crop_pct 0.875 (256 → 224), bicubic, ImageNet mean/std.
      pp_eval='decode|resize(256, method="bicubic")|central_crop(224)|normalize()|keep("image", "label")')
  c.batch_size = 4096
  epoch = IMAGENET_TRAIN // c.batch_size
  c.total_steps = 300 * epoch
  c.optimizer = dict(name='adamw', learning_rate=4e-3, weight_decay=0.05, b1=0.9, b2=0.999, grad_clip=None,
                     warmup_steps=20 * epoch, schedule='cosine', end_lr=1e-5)
  c.label_smoothing = 0.1
  c.mixup = dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0)
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sharding_rules = parallel.DEFAULT_RULES
  c.log_every = 100
  c.eval_every = 5 * epoch
  c.checkpoint_every = epoch
  c.keep_checkpoints = 3
  return c
