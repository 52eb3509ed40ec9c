# Command:  python train.py --config=configs/maxvit_digits.py --workdir=workdirs/maxvit_digits
# Expected: >= 95% top-1 on the 360 held-out digits (100% measured; 94.4% at step 500, 98.9% at 1000); about
#           4 CPU-minutes of training (6 min wall on a busy 2-core machine), no download.
"""MaxViT quickstart on scikit-learn's digits at 16 px: two stages of one MaxViT block each (MBConv, then block and
grid attention with 2×2 windows: window = image_size // partition_ratio = 16 // 8), BatchNorm state in
`batch_stats`."""
from configs import quickstart


def get_config(arg=None):
  c = quickstart.get_config(arg)  # Same data, pipeline, optimizer and mesh as the ViT quickstart.
  c.model = dict(name='maxvit', image_size=16, stem_width=16, dims=(32, 64), depths=(1, 1), partition_ratio=8,
                 drop_path=0.1, attn_impl='xla')
  c.total_steps = 1_500
  c.batch_size = 64
  c.eval_every = 500
  c.checkpoint_every = 500
  return c
