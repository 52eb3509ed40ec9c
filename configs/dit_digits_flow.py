# Command:  python train.py --config=configs/dit_digits_flow.py --workdir=workdirs/dit_digits_flow
#           python eval.py --config=configs/dit_digits_flow.py --workdir=workdirs/dit_digits_flow
# Expected: not measured yet (same cost per step as configs/dit_digits.py: ~15 CPU-minutes for 3,000 steps).
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
