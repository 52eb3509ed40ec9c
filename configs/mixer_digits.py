# Command:  python train.py --config=configs/mixer_digits.py --workdir=workdirs/mixer_digits
# Expected: >= 95% top-1 on the 360 held-out digits; a few minutes of training on 2 CPU cores, no download.
"""A small MLP-Mixer (4×4 patches at 16 px: 16 tokens) on scikit-learn's digits: the Mixer quickstart (same data and
pipeline as configs/quickstart.py)."""
import ml_collections

from vision_models import parallel


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(name='mixer', patch_size=4, width=128, depth=4, tokens_mlp_dim=64, channels_mlp_dim=512,
                 drop_path=0.1)
  c.data = dict(
      name='sklearn_digits', data_dir=None, train_split='train', eval_split='test',
      image_size=16, channels=1, shuffle_buffer=2_000,
      pp_train='decode(1)|resize(16)|random_shift(2)|value_range(-1, 1)|keep("image", "label")',
      pp_eval='decode(1)|resize(16)|value_range(-1, 1)|keep("image", "label")')
  c.batch_size = 128
  c.total_steps = 1_500
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
