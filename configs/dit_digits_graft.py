# Command:  python train.py --config=configs/dit_digits.py --workdir=workdirs/dit_digits          (the trained source)
#           python train.py --config=configs/dit_digits_graft.py --workdir=workdirs/dit_digits_graft
#           python eval.py --config=configs/dit_digits_graft.py --workdir=workdirs/dit_digits_graft
# Expected: not measured yet. The run prints the graft report (loaded / replaced / created variables) first.
"""Grafting (Chandrasegaran et al. 2025, "Exploring diffusion transformer designs via grafting"): start from the trained
configs/dit_digits.py run, replace attention in blocks 2 and 3 by a Hyena-style gated 2-D convolution, fit the new
mixers to the old blocks' outputs for 200 steps of distillation, then fine-tune the whole model for 1,000 steps at a
lower learning rate."""
from configs import dit_digits


def get_config(arg=None):
  c = dit_digits.get_config(arg)
  c.model.mixer_overrides = {'2:4': 'hyena2d'}
  c.init_from = dict(workdir='workdirs/dit_digits', config='configs/dit_digits.py', graft=True, distill_steps=200,
                     distill_lr=1e-3, use_ema=True)
  c.total_steps = 1_000
  c.optimizer.update(learning_rate=3e-4, warmup_steps=50)
  c.checkpoint_every = 500
  return c
