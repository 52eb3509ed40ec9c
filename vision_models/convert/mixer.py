"""timm MLP-Mixer state dicts → our Mixer. The architecture comes from the shapes; the token-mixing MLP's input
width is the patch count, which fixes the resolution."""
import re
from typing import Any, Mapping

import flax.linen as nn
import numpy as np

from vision_models import models
from vision_models.convert import common
from vision_models.convert.variants import build, overrides, square_side
from vision_models.errors import ConfigError


def registry_name(timm_name: str) -> str:
  """`mixer_b16_224.goog_in21k_ft_in1k` → `mixer_b16`; other names → the bare `mixer`."""
  match = re.match(r'^mixer_([sblh]\d+)_\d+', timm_name)
  name = f'mixer_{match.group(1)}' if match else 'mixer'
  return name if name in models.names() else 'mixer'


def layer_norm(sd: common.StateDict, src: str) -> dict[str, np.ndarray]:
  return {'scale': sd[f'{src}.weight'], 'bias': sd[f'{src}.bias']}


def linear(sd: common.StateDict, src: str) -> dict[str, np.ndarray]:
  return {'kernel': common.linear(sd[f'{src}.weight']), 'bias': sd[f'{src}.bias']}


def architecture(sd: common.StateDict) -> tuple[dict[str, Any], int]:
  """Our Mixer fields from the shapes of a timm state dict, and the image size they fix."""
  if 'stem.proj.weight' not in sd or 'blocks.0.mlp_tokens.fc1.weight' not in sd:
    raise ConfigError(f'{sd.source}: not an MLP-Mixer state dict (no stem.proj / blocks.*.mlp_tokens tensors)')
  width, _, patch, _ = (int(n) for n in sd.tensors['stem.proj.weight'].shape)
  tokens_mlp, seq = (int(n) for n in sd.tensors['blocks.0.mlp_tokens.fc1.weight'].shape)
  side = square_side(seq)
  if side is None:
    raise ConfigError(f'{sd.source}: {seq} patches do not form a square grid')
  arch = dict(
      num_classes=int(sd.tensors['head.weight'].shape[0]) if 'head.weight' in sd else 0,
      patch_size=patch, width=width,
      depth=len([k for k in sd.tensors if re.fullmatch(r'blocks\.\d+\.norm1\.weight', k)]),
      tokens_mlp_dim=tokens_mlp, channels_mlp_dim=int(sd.tensors['blocks.0.mlp_channels.fc1.weight'].shape[0]))
  return arch, side * patch


@common.register_timm('mixer_')
def from_timm(timm_name: str, state_dict: Mapping[str, Any], **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
  """A timm MLP-Mixer → `(module, variables)`; `kwargs` set other model fields (dtype, remat...)."""
  sd = common.StateDict(state_dict, f'timm {timm_name}')
  arch, image_size = architecture(sd)
  p = {'stem': {'kernel': common.conv(sd['stem.proj.weight']), 'bias': sd['stem.proj.bias']},
       'norm': layer_norm(sd, 'norm')}
  for i in range(arch['depth']):
    src = f'blocks.{i}'
    p[f'blocks_{i}'] = {
        'norm1': layer_norm(sd, f'{src}.norm1'), 'norm2': layer_norm(sd, f'{src}.norm2'),
        'mlp_tokens': {'fc1': linear(sd, f'{src}.mlp_tokens.fc1'), 'fc2': linear(sd, f'{src}.mlp_tokens.fc2')},
        'mlp_channels': {'fc1': linear(sd, f'{src}.mlp_channels.fc1'), 'fc2': linear(sd, f'{src}.mlp_channels.fc2')}}
  if arch['num_classes']:
    p['head'] = linear(sd, 'head')
  name = registry_name(timm_name)
  return build(name, {**overrides(name, arch), **kwargs}, {'params': p}, sd, image_size)
