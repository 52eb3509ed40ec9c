# Command:  python train.py --config=configs/mixer_digits.py --workdir=workdirs/mixer_digits
# Expected: >= 95% top-1 on the 360 held-out digits; a few minutes of training on 2 CPU cores, no download.
"""A small MLP-Mixer (4×4 patches at 16 px: 16 tokens) on scikit-learn's digits: the Mixer quickstart (same data and
pipeline as configs/quickstart.py)."""
from configs import quickstart


def get_config(arg=None):
  c = quickstart.get_config(arg)  # Same data, pipeline, optimizer and mesh as the ViT quickstart.
  c.model = dict(name='mixer', patch_size=4, width=128, depth=4, tokens_mlp_dim=64, channels_mlp_dim=512,
                 drop_path=0.1)
  c.total_steps = 1_500
  c.eval_every = 500
  c.checkpoint_every = 500
  return c
