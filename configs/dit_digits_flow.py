# Command:  python train.py --config=configs/dit_digits_flow.py --workdir=workdirs/dit_digits_flow
#           python eval.py --config=configs/dit_digits_flow.py --workdir=workdirs/dit_digits_flow
# Expected: 3,000 steps, final train loss 0.327 (velocity MSE: not comparable with DDPM's), 18 min wall / 16.6
#           CPU-minutes on 2 shared cores (measured 2026-11-23); eval.py (25 Heun steps, cfg 2.0: 50 model calls against
#           DDPM's 100) writes readable digits, 99.6% of 1,000 classified as asked by the quickstart ViT (DDPM: 98.9%).
"""configs/dit_digits.py with the modern recipe: rectified flow (velocity target, MSE) with SD3's logit-normal
timesteps instead of DDPM's hybrid loss, RMS-normalised queries and keys, AdaLN-LoRA conditioning (one shared
modulation plus a rank-16 update per block), and 25 Heun steps (50 model calls) with classifier-free guidance."""
from configs import dit_digits


def get_config(arg=None):
  c = dit_digits.get_config(arg)
  c.model.update(learn_sigma=False, qk_norm='rmsnorm', adaln_lora_rank=16)  # Flow predicts the velocity only.
  c.diffusion = dict(objective='rectified_flow', timestep_sampling='logit_normal', logit_mean=0.0, logit_std=1.0)
  c.sample.update(method='heun', num_steps=25, cfg_scale=2.0)
  return c
