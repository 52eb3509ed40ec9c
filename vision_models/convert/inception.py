"""pytorch-fid's FID Inception weights (`pt_inception-2015-12-05-6726825d.pth`, torchvision `Inception3` keys with
the FID blocks and a 1008-class `fc`) → `vision_models.diffusion.fid.InceptionV3`."""
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from vision_models.convert.common import StateDict, conv, fill, linear

SOURCE = 'pytorch-fid Inception'
_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'), 'running_mean': ('batch_stats', 'mean'),
       'running_var': ('batch_stats', 'var')}


def from_pytorch_fid(state_dict: Mapping[str, Any], resize: bool = True) -> tuple[nn.Module, dict[str, Any]]:
  """`(InceptionV3, variables)` from the pytorch-fid state dict (numpy arrays or torch tensors)."""
  from vision_models.diffusion.fid import InceptionV3
  sd = StateDict(state_dict, SOURCE)
  sd.skip(*(k for k in sd.tensors if k.endswith('num_batches_tracked')))
  converted = {}
  for key in sd.tensors:
    if key in sd.used:
      continue
    parts = key.split('.')
    path, (layer, leaf) = parts[:-2], (['', ''] + parts)[-2:]
    if key == 'fc.weight':
      converted['params/fc/kernel'] = linear(sd[key])
    elif key == 'fc.bias':
      converted['params/fc_bias'] = sd[key]
    elif layer == 'conv' and leaf == 'weight':
      converted['/'.join(['params', *path, 'conv', 'kernel'])] = conv(sd[key])
    elif layer == 'bn' and leaf in _BN:
      collection, name = _BN[leaf]
      converted['/'.join([collection, *path, 'bn', name])] = sd[key]
  sd.check_all_used()
  module = InceptionV3(resize=resize)
  return module, fill(module, jnp.zeros((1, 299, 299, 3)), converted, SOURCE)
