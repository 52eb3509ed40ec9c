# Command:  python train.py --config=configs/dit_xl2.py --workdir=workdirs/dit_xl2
# Expected: the DiT paper's ImageNet 256×256 XL/2 run (FID-50K 2.27 with cfg 1.5 after 7M steps, 9.62 without
#           guidance; README of facebookresearch/DiT). Needs accelerators: ~119 GMACs per image forward.
# Data:     ImageNet encoded once into SD-VAE latents (×0.18215, 32×32×4 float32 `latent` with `label`), each image
#           and its mirror image (DiT's flip augmentation, applied to the images before encoding as the official code):
#             python -m vision_models.diffusion.encode_latents --dataset imagenet2012 --split train --data_dir DATA \
#                 --vae sd-vae-ft-ema/diffusion_pytorch_model.safetensors --image_size 256 --out DATA --flip
#           writes the TFDS dataset imagenet2012_latents256 that `config.data` reads (`feature='latent'`);
#           eval.py decodes samples with the same VAE (`config.sample.vae`).
"""DiT-XL/2 on ImageNet 256 latents with the official recipe (`train.py`): AdamW 1e-4 constant, no weight decay, no
warmup, global batch 256, EMA 0.9999, horizontal flips only, label dropout 0.1, learned sigma with the hybrid loss,
1000 linear-β steps; sampling with 250 respaced DDPM steps and cfg 1.5 on the first 3 latent channels (as the
official `forward_with_cfg`)."""
import ml_collections
from ml_collections import config_dict

from vision_models import parallel


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.task = 'diffusion'
  c.seed = 0
  c.model = dict(name='dit_xl2', class_dropout_prob=0.1, learn_sigma=True, attn_impl='auto', remat=False)
  c.data = dict(name='imagenet2012_latents256', data_dir=config_dict.placeholder(str), train_split='train',
                image_size=32, channels=4, feature='latent', shuffle_buffer=50_000, pp_train='keep("latent", "label")')
  c.diffusion = dict(num_timesteps=1000)
  c.batch_size = 256
  # 1400 epochs of 5,004 steps (700 passes over the mirrored latents); the paper's ablations stop at 400K.
  c.total_steps = 7_000_000
  c.optimizer = dict(name='adamw', learning_rate=1e-4, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8,
                     warmup_steps=0, schedule='constant')
  c.ema_decay = 0.9999
  c.sample = dict(num_samples=50_000, batch_size=256, respacing='250', method='ddpm', eta=0.0, cfg_scale=1.5,
                  guidance_channels=3, seed=0, vae='sd-vae-ft-ema/diffusion_pytorch_model.safetensors',
                  classifier_config=config_dict.placeholder(str), classifier_workdir=config_dict.placeholder(str))
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sharding_rules = parallel.DEFAULT_RULES
  c.log_every = 100
  c.checkpoint_every = 50_000
  c.keep_checkpoints = 3
  return c
