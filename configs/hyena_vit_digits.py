# Command:  python train.py --config=configs/hyena_vit_digits.py --workdir=workdirs/hyena_vit_digits
# Expected: >= 95% top-1 on the 360 held-out digits; a few minutes of training on 2 CPU cores, no download.
"""The quickstart ViT with the 2-D Hyena token mixer (Hyena N-D) in place of attention: the Hyena ViT quickstart
(same data, pipeline, optimizer and schedule as configs/quickstart.py; hyena_vit_{ti,s,b}16 are the full sizes)."""
from configs import quickstart


def get_config(arg=None):
  c = quickstart.get_config(arg)
  c.model.mixer = 'hyena2d'  # GAP and sin-cos position embeddings as the quickstart; attn_impl 'xla' → jnp.fft.
  return c
