"""diffusers `AutoencoderKL` state dict (e.g. `sd-vae-ft-mse/diffusion_pytorch_model.safetensors`) → our Flax VAE.

The Flax module names mirror the diffusers keys, so conversion is `a.b.0.c.weight` → `a/b_0/c/kernel` with conv
OIHW → HWIO and Linear (out, in) → (in, out). Both attention layouts are accepted: the old
`mid_block.attentions.0.{query,key,value,proj_attn}` and the current `{to_q,to_k,to_v,to_out.0}`.
"""
import re
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from vision_models.convert.common import StateDict, conv, fill, linear
from vision_models.diffusion.vae import AutoencoderKL

SOURCE = 'diffusers AutoencoderKL'
_OLD_ATTENTION = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v', 'proj_attn': 'to_out_0'}


def infer_config(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """The architecture the weights imply (everything but `norm_num_groups`, which leaves no trace in the shapes)."""
  def shape(key):
    return tuple(state_dict[key].shape) if key in state_dict else None

  config: dict[str, Any] = {}
  widths = []
  while shape(f'encoder.down_blocks.{len(widths)}.resnets.0.conv1.weight'):
    widths.append(shape(f'encoder.down_blocks.{len(widths)}.resnets.0.conv1.weight')[0])
  if widths:
    config['block_out_channels'] = tuple(widths)
    config['layers_per_block'] = sum(1 for k in state_dict
                                     if re.fullmatch(r'encoder\.down_blocks\.0\.resnets\.\d+\.conv1\.weight', k))
  if shape('encoder.conv_in.weight'):
    config['in_channels'] = shape('encoder.conv_in.weight')[1]
  if shape('decoder.conv_in.weight'):
    config['latent_channels'] = shape('decoder.conv_in.weight')[1]
  if shape('decoder.conv_out.weight'):
    config['out_channels'] = shape('decoder.conv_out.weight')[0]
  config['use_quant_conv'] = 'quant_conv.weight' in state_dict
  config['use_post_quant_conv'] = 'post_quant_conv.weight' in state_dict
  return config


def _flax_key(key: str, ndim: int) -> str:
  *path, leaf = re.sub(r'\.(\d+)(?=\.)', r'_\1', key).split('.')
  path[-1] = _OLD_ATTENTION.get(path[-1], path[-1])
  if leaf == 'weight':
    leaf = 'kernel' if ndim in (2, 4) else 'scale'
  return '/'.join(['params', *path, leaf])


def from_diffusers_vae(state_dict: Mapping[str, Any], **config: Any) -> tuple[nn.Module, dict[str, Any]]:
  """`(AutoencoderKL module, variables)` from a diffusers AutoencoderKL state dict (numpy arrays or torch tensors).

  The architecture is read off the tensor shapes; `config` overrides it and must give `norm_num_groups` when it is
  not the SD VAE's 32 (diffusers' `config.json` has it), plus `dtype` / `attn_impl` if wanted.
  """
  sd = StateDict(state_dict, SOURCE)
  config = {**infer_config(sd.tensors), **config}
  if 'block_out_channels' in config:  # A list from config.json would make the module unhashable.
    config['block_out_channels'] = tuple(config['block_out_channels'])
  module = AutoencoderKL(**config)
  converted = {}
  for key in sd.tensors:
    w = sd[key]
    w = conv(w) if w.ndim == 4 else linear(w) if w.ndim == 2 else w
    converted[_flax_key(key, w.ndim)] = w
  sd.check_all_used()
  f = module.downsample_factor
  return module, fill(module, jnp.zeros((1, f, f, module.in_channels)), converted, SOURCE)
