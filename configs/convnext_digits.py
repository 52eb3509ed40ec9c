# Command:  python train.py --config=configs/convnext_digits.py --workdir=workdirs/convnext_digits
# Expected: >= 95% top-1 on the 360 held-out digits; a few minutes of training on 2 CPU cores, no download.
"""A small ConvNeXt (3 stages, 2×2 stem at 16 px, 5×5 depthwise kernels) on scikit-learn's digits: the ConvNeXt
quickstart (same data and pipeline as configs/quickstart.py)."""
from configs import quickstart


def get_config(arg=None):
  c = quickstart.get_config(arg)  # Same data, pipeline, optimizer and mesh as the ViT quickstart.
  c.model = dict(name='convnext', patch_size=2, depths=(2, 2, 2), dims=(32, 64, 128), kernel_size=5,
                 layer_scale=1e-6, drop_path=0.1, depthwise_impl='shift')
  c.total_steps = 1_000
  c.eval_every = 500
  c.checkpoint_every = 500
  return c
