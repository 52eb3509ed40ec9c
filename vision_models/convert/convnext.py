"""timm ConvNeXt / ConvNeXt V2 state dicts → our ConvNeXt.

The architecture comes from the shapes: depths, dims, depthwise kernel size, stem patch, GRN (V2) or layer scale (V1),
classes. timm's atto … nano use 1×1 convs for the MLP (`conv_mlp`): the same weights as Linear layers, reshaped.
"""
import re
from typing import Any, Mapping

import flax.linen as nn
import numpy as np

from vision_models import models
from vision_models.convert import common
from vision_models.convert.variants import build, overrides
from vision_models.errors import ConfigError

V1_SIZES = {'tiny': 't', 'small': 's', 'base': 'b', 'large': 'l', 'xlarge': 'xl'}
V2_SIZES = {'atto': 'a', 'femto': 'f', 'pico': 'p', 'nano': 'n', 'tiny': 't', 'base': 'b', 'large': 'l', 'huge': 'h'}


def registry_name(timm_name: str) -> str:
  """`convnext_tiny.fb_in1k` → `convnext_t`, `convnextv2_atto` → `convnextv2_a`; other timm sizes → `convnext`."""
  match = re.match(r'^(convnext|convnextv2)_([a-z]+)(?:\.|$)', timm_name)
  if match:
    family, size = match.groups()
    size = (V1_SIZES if family == 'convnext' else V2_SIZES).get(size)
    if size and f'{family}_{size}' in models.names():
      return f'{family}_{size}'
  return 'convnext'


def layer_norm(sd: common.StateDict, src: str) -> dict[str, np.ndarray]:
  return {'scale': sd[f'{src}.weight'], 'bias': sd[f'{src}.bias']}


def conv(sd: common.StateDict, src: str) -> dict[str, np.ndarray]:
  return {'kernel': common.conv(sd[f'{src}.weight']), 'bias': sd[f'{src}.bias']}


def linear(sd: common.StateDict, src: str) -> dict[str, np.ndarray]:
  """A Linear, or a 1×1 conv used as one (timm `conv_mlp`)."""
  w = sd[f'{src}.weight']
  return {'kernel': common.linear(w.reshape(w.shape[0], -1)), 'bias': sd[f'{src}.bias']}


def architecture(sd: common.StateDict) -> dict[str, Any]:
  """Our ConvNeXt fields from the shapes of a timm state dict."""
  blocks = [re.fullmatch(r'stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.weight', k) for k in sd.tensors]
  blocks = [tuple(int(g) for g in m.groups()) for m in blocks if m]
  if not blocks or 'stem.0.weight' not in sd:
    raise ConfigError(f'{sd.source}: not a ConvNeXt state dict (no stem.0 / stages.*.blocks.*.conv_dw tensors)')
  num_stages = max(s for s, _ in blocks) + 1
  depths = tuple(1 + max(j for s, j in blocks if s == i) for i in range(num_stages))
  dims = tuple(int(sd.tensors[f'stages.{i}.blocks.0.conv_dw.weight'].shape[0]) for i in range(num_stages))
  return dict(
      num_classes=int(sd.tensors['head.fc.weight'].shape[0]) if 'head.fc.weight' in sd else 0,
      depths=depths, dims=dims, kernel_size=int(sd.tensors['stages.0.blocks.0.conv_dw.weight'].shape[-1]),
      patch_size=int(sd.tensors['stem.0.weight'].shape[-1]),
      layer_scale=1e-6 if 'stages.0.blocks.0.gamma' in sd else None,
      grn='stages.0.blocks.0.mlp.grn.weight' in sd)


@common.register_timm('convnext_')
@common.register_timm('convnextv2_')
def from_timm(timm_name: str, state_dict: Mapping[str, Any], **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
  """A timm ConvNeXt (V1 or V2) → `(module, variables)`; `kwargs` set other model fields (dtype, remat...)."""
  sd = common.StateDict(state_dict, f'timm {timm_name}')
  arch = architecture(sd)
  p = {'stem_conv': conv(sd, 'stem.0'), 'stem_norm': layer_norm(sd, 'stem.1')}
  for i, depth in enumerate(arch['depths']):
    if i > 0:
      p[f'stages_{i}_downsample_norm'] = layer_norm(sd, f'stages.{i}.downsample.0')
      p[f'stages_{i}_downsample_conv'] = conv(sd, f'stages.{i}.downsample.1')
    for j in range(depth):
      src = f'stages.{i}.blocks.{j}'
      mlp = {'fc1': linear(sd, f'{src}.mlp.fc1'), 'fc2': linear(sd, f'{src}.mlp.fc2')}
      if arch['grn']:
        mlp['grn'] = {'weight': sd[f'{src}.mlp.grn.weight'], 'bias': sd[f'{src}.mlp.grn.bias']}
      block = {'conv_dw': conv(sd, f'{src}.conv_dw'), 'norm': layer_norm(sd, f'{src}.norm'), 'mlp': mlp}
      if arch['layer_scale']:
        block['ls'] = {'gamma': sd[f'{src}.gamma']}
      p[f'stages_{i}_blocks_{j}'] = block
  p['head_norm'] = layer_norm(sd, 'head.norm')
  if arch['num_classes']:
    p['head'] = {'kernel': common.linear(sd['head.fc.weight']), 'bias': sd['head.fc.bias']}
  name = registry_name(timm_name)
  # Any resolution works; 8 stem patches across leave a 1×1 map in the last stage.
  return build(name, {**overrides(name, arch), **kwargs}, {'params': p}, sd, 8 * arch['patch_size'])
