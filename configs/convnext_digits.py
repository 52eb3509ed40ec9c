# Command:  python train.py --config=configs/convnext_digits.py --workdir=workdirs/convnext_digits
# Expected: >= 95% top-1 on the 360 held-out digits; a few minutes of training on 2 CPU cores, no download.
"""A small ConvNeXt (3 stages, 2×2 stem at 16 px, 5×5 depthwise kernels) on scikit-learn's digits: the ConvNeXt
quickstart (same data and pipeline as configs/quickstart.py)."""
import ml_collections

from vision_models import parallel


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  # depthwise_impl='shift': XLA's grouped conv is slow on the CPU (its backward pass most of all).
  c.model = dict(name='convnext', patch_size=2, depths=(2, 2, 2), dims=(32, 64, 128), kernel_size=5, drop_path=0.1,
                 layer_scale=1e-6, depthwise_impl='shift')
  c.data = dict(
      name='sklearn_digits', data_dir=None, train_split='train', eval_split='test',
      image_size=16, channels=1, shuffle_buffer=2_000,
      pp_train='decode(1)|resize(16)|random_shift(2)|value_range(-1, 1)|keep("image", "label")',
      pp_eval='decode(1)|resize(16)|value_range(-1, 1)|keep("image", "label")')
  c.batch_size = 128
  c.total_steps = 1_000
  c.optimizer = dict(name='adamw', learning_rate=2e-3, weight_decay=0.05, b1=0.9, b2=0.999, grad_clip=1.0,
                     warmup_steps=100, schedule='cosine', end_lr=1e-5)
  c.label_smoothing = 0.1
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sharding_rules = parallel.DEFAULT_RULES
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  return c
