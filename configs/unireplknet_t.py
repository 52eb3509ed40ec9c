# Command:  python train.py --config=configs/unireplknet_t.py --workdir=workdirs/unireplknet_t
# Expected: 83.2% top-1 on ImageNet-1k val at 224 (UniRepLKNet paper; the official checkpoint is
#           unireplknet_t_in1k_224_acc83.21) with the full recipe below; evaluate the re-parameterised form
#           (`models.unireplknet.reparameterize`), which gives the same logits.
# Epochs:   300 (20 warmup), batch 4096 (4 GPUs x 128 x update_freq 8), AdamW lr 4e-3, wd 0.05, cosine to 1e-6,
#           drop_path 0.2, label smoothing 0.1 (AILab-CVC/UniRepLKNet Image/README.md and main.py defaults).
# Time:     ~1.1e19 training FLOPs (4.9 GMACs x 2 x 3 x 1.28M images x 300 epochs): about 11 h of pure compute on
#           8 x H100 at 30% bf16 MFU (estimate; the depthwise convs and BatchNorm make real runs slower).
#           depthwise_impl='pallas' runs the large kernels with the Pallas depthwise kernel on GPUs/TPUs.
# Not yet in this codebase (the official recipe also has them): RandAugment rand-m9-mstd0.5-inc1, mixup 0.8 /
# cutmix 1.0, random erasing 0.25 and the inception crop; without them expect a lower top-1.
"""UniRepLKNet-T on ImageNet-1k from scratch (AILab-CVC/UniRepLKNet), trained in its re-parameterisable form."""
import ml_collections

from vision_models import parallel

IMAGENET_TRAIN = 1_281_167


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(name='unireplknet_t', drop_path=0.2, layer_scale=1e-6, depthwise_impl='xla', dtype='bfloat16',
                 remat=False)
  c.data = dict(
      name='imagenet2012', data_dir=None, train_split='train', eval_split='validation',
      image_size=224, channels=3, shuffle_buffer=250_000,
      pp_train='decode|resize(224, method="bicubic")|flip_lr|normalize()|keep("image", "label")',
      # ConvNeXt-style eval: crop_pct 0.875 (256 → 224), bicubic, ImageNet mean/std.
      pp_eval='decode|resize(256, method="bicubic")|central_crop(224)|normalize()|keep("image", "label")')
  c.batch_size = 4096
  epoch = IMAGENET_TRAIN // c.batch_size
  c.total_steps = 300 * epoch
  c.optimizer = dict(name='adamw', learning_rate=4e-3, weight_decay=0.05, b1=0.9, b2=0.999, grad_clip=None,
                     warmup_steps=20 * epoch, schedule='cosine', end_lr=1e-6)
  c.label_smoothing = 0.1
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sharding_rules = parallel.DEFAULT_RULES
  c.log_every = 100
  c.eval_every = 5 * epoch
  c.checkpoint_every = epoch
  c.keep_checkpoints = 3
  return c
