"""timm ViT / DeiT / DeiT III state dicts → our ViT.

The architecture comes from the tensor shapes (width, patch, depth, MLP width, classes, class / distillation tokens,
layer scale, whether the position embedding covers the class token, the resolution); only the number of heads is
not in the shapes (timm fuses q, k, v): it comes from `num_heads=`, else the timm name's registered size.
timm's fused `qkv` (3·d, d) is split into our `{query,key,value}_kernel [d, heads, head_dim]`.
"""
import re
from typing import Any, Mapping

import flax.linen as nn
import numpy as np

from vision_models import models
from vision_models.convert import common
from vision_models.convert.variants import build, overrides, square_side
from vision_models.errors import ConfigError

SIZES = {'tiny': 'ti', 'small': 's', 'base': 'b', 'large': 'l', 'huge': 'h'}
_NAME = re.compile(r'^(vit|deit|deit3)_(tiny|small|base|large|huge)(_distilled)?_patch(\d+)_\d+')


def registry_name(timm_name: str) -> str:
  """Our variant for a timm ViT name (`vit_base_patch16_384.augreg_in21k` → `vit_b16`), else the bare `vit`."""
  match = _NAME.match(timm_name)
  if not match:
    return 'vit'
  family, size, distilled, patch = match.groups()
  size = SIZES[size]
  if family == 'deit3':
    name = f'deit3_{size}{patch}'
  elif distilled:
    name = f'deit_{size}{patch}_distilled'
  else:
    name = f'vit_{size}{patch}'
  return name if name in models.names() else 'vit'


def layer_norm(sd: common.StateDict, src: str) -> dict[str, np.ndarray]:
  return {'scale': sd[f'{src}.weight'], 'bias': sd[f'{src}.bias']}


def linear(sd: common.StateDict, src: str) -> dict[str, np.ndarray]:
  return {'kernel': common.linear(sd[f'{src}.weight']), 'bias': sd[f'{src}.bias']}


def attention(sd: common.StateDict, src: str, heads: int) -> dict[str, np.ndarray]:
  """timm `Attention` (fused qkv, proj) → `layers.Attention` (split, heads explicit)."""
  qkv_w, qkv_b = sd[f'{src}.qkv.weight'], sd[f'{src}.qkv.bias']
  dim = qkv_w.shape[1]
  if dim % heads:
    raise ConfigError(f'{sd.source}: width {dim} is not divisible by num_heads={heads}; pass the right num_heads=')
  out = {}
  for i, name in enumerate(('query', 'key', 'value')):
    w, b = qkv_w[i * dim:(i + 1) * dim], qkv_b[i * dim:(i + 1) * dim]
    out[f'{name}_kernel'] = w.T.reshape(dim, heads, dim // heads)
    out[f'{name}_bias'] = b.reshape(heads, dim // heads)
  out['out_kernel'] = sd[f'{src}.proj.weight'].T.reshape(heads, dim // heads, dim)
  out['out_bias'] = sd[f'{src}.proj.bias']
  return out


def architecture(timm_name: str, sd: common.StateDict, num_heads: int | None = None) -> tuple[dict[str, Any], int]:
  """Our ViT fields from the shapes of a timm state dict, and the image size its position embedding was made for."""
  if 'pos_embed' not in sd:
    raise ConfigError(f'{sd.source}: no pos_embed; ViTs without a learned position embedding are not supported')
  width, _, patch, _ = sd.tensors['patch_embed.proj.weight'].shape
  depth = len([k for k in sd.tensors if re.fullmatch(r'blocks\.\d+\.norm1\.weight', k)])
  prefix = int('cls_token' in sd) + int('dist_token' in sd)
  rows = sd.tensors['pos_embed'].shape[1]
  no_embed_class = prefix > 0 and square_side(rows) is not None
  side = square_side(rows if no_embed_class else rows - prefix)
  if side is None:
    raise ConfigError(f'{sd.source}: pos_embed has {rows} rows, not a square grid (+{prefix} tokens)')
  if num_heads is None:  # No guess: head widths differ (vit_giant_patch16_gap_224: 1408 wide, 16 heads of 88).
    name = registry_name(timm_name)
    base = models.create(name)
    if name == 'vit' or base.width != width:
      raise ConfigError(f'{sd.source}: the number of heads is not in the state dict and {timm_name!r} names no '
                        f'registered ViT of width {width}; pass num_heads= (timm\'s model config has it)')
    num_heads = base.num_heads
  arch = dict(
      num_classes=sd.tensors['head.weight'].shape[0] if 'head.weight' in sd else 0,
      patch_size=int(patch), width=int(width), depth=depth, num_heads=num_heads,
      mlp_dim=sd.tensors['blocks.0.mlp.fc1.weight'].shape[0],
      pool='token' if 'cls_token' in sd else 'gap', layer_scale=1e-6 if 'blocks.0.ls1.gamma' in sd else None,
      no_embed_class=no_embed_class, distilled='dist_token' in sd)
  if arch['pool'] == 'gap':  # timm normalises after pooling (`fc_norm`) or every token before it.
    arch['fc_norm'] = 'fc_norm.weight' in sd
  return arch, side * int(patch)


@common.register_timm('vit_')
@common.register_timm('deit_')
@common.register_timm('deit3_')
def from_timm(timm_name: str, state_dict: Mapping[str, Any], num_heads: int | None = None,
              **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
  """A timm ViT / DeiT / DeiT III → `(module, variables)`; `kwargs` set other model fields (dtype, attn_impl...)."""
  sd = common.StateDict(state_dict, f'timm {timm_name}')
  arch, image_size = architecture(timm_name, sd, num_heads)
  p = {'patch_embed': {'kernel': common.conv(sd['patch_embed.proj.weight']), 'bias': sd['patch_embed.proj.bias']},
       'pos_embed': sd['pos_embed']}
  for token in ('cls_token', 'dist_token'):
    if token in sd:
      p[token] = sd[token]
  for i in range(arch['depth']):
    src = f'blocks.{i}'
    block = {'norm1': layer_norm(sd, f'{src}.norm1'), 'norm2': layer_norm(sd, f'{src}.norm2'),
             'attn': attention(sd, f'{src}.attn', arch['num_heads']),
             'mlp': {'fc1': linear(sd, f'{src}.mlp.fc1'), 'fc2': linear(sd, f'{src}.mlp.fc2')}}
    if arch['layer_scale']:
      block['ls1'], block['ls2'] = {'gamma': sd[f'{src}.ls1.gamma']}, {'gamma': sd[f'{src}.ls2.gamma']}
    p[f'blocks_{i}'] = block
  for norm in ('norm', 'fc_norm'):
    if f'{norm}.weight' in sd:
      p[norm] = layer_norm(sd, norm)
  for head in ('head', 'head_dist'):
    if f'{head}.weight' in sd:
      p[head] = linear(sd, head)
  name = registry_name(timm_name)
  return build(name, {**overrides(name, arch), **kwargs}, {'params': p}, sd, image_size)
