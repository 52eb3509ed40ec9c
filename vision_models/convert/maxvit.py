"""timm `maxvit_{tiny,small,base,large,xlarge}_tf_{224,384,512}` state dicts → our MaxViT.

The architecture (stem width, widths, depths, head width, classes, window) is read from the tensor shapes, so any
`timm.create_model('maxvit_*_tf_*', embed_dim=..., depths=..., stem_width=..., head_hidden_size=...)` converts.
"""
import re
from typing import Any, Mapping

import numpy as np

from vision_models.convert.common import StateDict, conv, fill, linear, register_timm
from vision_models.errors import ConfigError
from vision_models.models import maxvit


def architecture(sd: StateDict, partition_ratio: int = 32) -> dict[str, Any]:
  """MaxViT keyword arguments from the shapes of a timm TF-MaxViT state dict."""
  shape = lambda key: tuple(sd.tensors[key].shape)  # noqa: E731  (peek without marking as used)
  if 'stem.conv1.weight' not in sd or not any('.attn_grid.' in k for k in sd.tensors):
    raise ConfigError(f'{sd.source}: not a MaxViT state dict (no stem.conv1 / attn_grid tensors)')
  blocks = sorted({(int(m[1]), int(m[2])) for k in sd.tensors if (m := re.match(r'stages\.(\d+)\.blocks\.(\d+)\.', k))})
  depths = [1 + max(j for i, j in blocks if i == s) for s in range(1 + max(i for i, _ in blocks))]
  dims = [shape(f'stages.{i}.blocks.0.conv.conv3_1x1.weight')[0] for i in range(len(depths))]
  heads, vocab, _ = shape('stages.0.blocks.0.attn_block.attn.rel_pos.relative_position_bias_table')
  window = (vocab + 1) // 2
  return dict(num_classes=shape('head.fc.weight')[0] if 'head.fc.weight' in sd else 0,
              image_size=window * partition_ratio, stem_width=shape('stem.conv1.weight')[0], dims=tuple(dims),
              depths=tuple(depths), head_dim=dims[0] // heads, partition_ratio=partition_ratio)


def convert_state_dict(sd: StateDict, dims, depths) -> dict[str, np.ndarray]:
  """Flat `{'params/...': array, 'batch_stats/...': array}` in our layout; marks every source tensor used."""
  out: dict[str, np.ndarray] = {}

  def put_conv(src: str, dst: str, bias: bool = True):
    out[f'params/{dst}/kernel'] = conv(sd[f'{src}.weight'])
    if bias:
      out[f'params/{dst}/bias'] = sd[f'{src}.bias']

  def put_bn(src: str, dst: str):
    out[f'params/{dst}/scale'], out[f'params/{dst}/bias'] = sd[f'{src}.weight'], sd[f'{src}.bias']
    out[f'batch_stats/{dst}/mean'], out[f'batch_stats/{dst}/var'] = sd[f'{src}.running_mean'], sd[f'{src}.running_var']
    sd.skip(f'{src}.num_batches_tracked')

  def put_ln(src: str, dst: str):
    out[f'params/{dst}/scale'], out[f'params/{dst}/bias'] = sd[f'{src}.weight'], sd[f'{src}.bias']

  def put_linear(src: str, dst: str):
    out[f'params/{dst}/kernel'], out[f'params/{dst}/bias'] = linear(sd[f'{src}.weight']), sd[f'{src}.bias']

  def put_attention(src: str, dst: str, dim: int):
    table = sd[f'{src}.attn.rel_pos.relative_position_bias_table']
    heads = table.shape[0]
    out[f'params/{dst}/relative_position_bias_table'] = table
    # TF layout (timm head_first=False): fused qkv output channels are ordered (q|k|v, head, head_dim).
    w = linear(sd[f'{src}.attn.qkv.weight']).reshape(dim, 3, heads, dim // heads)
    b = sd[f'{src}.attn.qkv.bias'].reshape(3, heads, dim // heads)
    for i, name in enumerate(('query', 'key', 'value')):
      out[f'params/{dst}/attn/{name}_kernel'], out[f'params/{dst}/attn/{name}_bias'] = w[:, i], b[i]
    out[f'params/{dst}/attn/out_kernel'] = linear(sd[f'{src}.attn.proj.weight']).reshape(heads, dim // heads, dim)
    out[f'params/{dst}/attn/out_bias'] = sd[f'{src}.attn.proj.bias']
    put_ln(f'{src}.norm1', f'{dst}/norm1')
    put_ln(f'{src}.norm2', f'{dst}/norm2')
    put_linear(f'{src}.mlp.fc1', f'{dst}/mlp/fc1')
    put_linear(f'{src}.mlp.fc2', f'{dst}/mlp/fc2')

  put_conv('stem.conv1', 'stem_conv1')
  put_bn('stem.norm1', 'stem_norm1')
  put_conv('stem.conv2', 'stem_conv2')
  for i, (dim, depth) in enumerate(zip(dims, depths)):
    for j in range(depth):
      src, dst = f'stages.{i}.blocks.{j}', f'stages_{i}_blocks_{j}'
      if f'{src}.conv.shortcut.expand.weight' in sd:
        put_conv(f'{src}.conv.shortcut.expand', f'{dst}/conv/shortcut_expand')
      put_bn(f'{src}.conv.pre_norm', f'{dst}/conv/pre_norm')
      put_conv(f'{src}.conv.conv1_1x1', f'{dst}/conv/conv1_1x1', bias=False)
      put_bn(f'{src}.conv.norm1', f'{dst}/conv/norm1')
      put_conv(f'{src}.conv.conv2_kxk', f'{dst}/conv/conv2_kxk', bias=False)
      put_bn(f'{src}.conv.norm2', f'{dst}/conv/norm2')
      put_conv(f'{src}.conv.se.fc1', f'{dst}/conv/se_fc1')
      put_conv(f'{src}.conv.se.fc2', f'{dst}/conv/se_fc2')
      put_conv(f'{src}.conv.conv3_1x1', f'{dst}/conv/conv3_1x1')
      put_attention(f'{src}.attn_block', f'{dst}/attn_block', dim)
      put_attention(f'{src}.attn_grid', f'{dst}/attn_grid', dim)
  put_ln('head.norm', 'norm')
  put_linear('head.pre_logits.fc', 'pre_logits')
  if 'head.fc.weight' in sd:
    put_linear('head.fc', 'head')
  return out


@register_timm('maxvit_')
def from_timm(timm_name: str, state_dict: Mapping[str, Any], **overrides: Any):
  """`(module, variables)` for a timm TF-MaxViT. `overrides` are MaxViT fields (dtype, attn_impl, drop_path, remat,
  partition_ratio); the architecture itself comes from the state dict. The relative position tables fix the image
  size (window × partition_ratio); the resolution in the name must agree (tables are not resized)."""
  base_name = timm_name.split('.')[0]  # without the pretrained tag (maxvit_tiny_tf_224.in1k)
  if not re.search(r'_tf(_\d+)?$', base_name):
    raise ConfigError(f'timm {timm_name!r}: only the TF-ported MaxViTs (maxvit_*_tf_*) convert; the timm-native '
                      '(_rw, rmlp) layouts differ')
  sd = StateDict(state_dict, f'timm {timm_name}')
  kwargs = architecture(sd, overrides.get('partition_ratio', 32))
  named = re.search(r'_(\d+)$', base_name)
  claims = ((int(named[1]) if named else None, 'the model name'), (overrides.get('image_size'), 'image_size'))
  for size, where in claims:
    if size is not None and size != kwargs['image_size']:
      raise ConfigError(f'timm {timm_name!r}: {where} says {size} px but the relative position tables are for '
                        f'{kwargs["image_size"]} px (window {kwargs["image_size"] // kwargs["partition_ratio"]}); '
                        'use the timm model of that resolution (tables are not resized)')
  model = maxvit.MaxViT(**{**kwargs, **overrides})
  converted = convert_state_dict(sd, kwargs['dims'], kwargs['depths'])
  sd.check_all_used()
  size = kwargs['image_size']
  variables = fill(model, np.zeros((1, size, size, 3), np.float32), converted, sd.source)
  return model, variables
