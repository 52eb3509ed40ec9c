"""timm InceptionNeXt (`inception_next_*`, timm's MetaNeXt) state dicts → our InceptionNeXt.

The architecture comes from the shapes: depths, dims, MLP ratios, the mixer's square / band kernels and branch width,
layer scale, classes. BatchNorm running statistics go to `batch_stats`; timm's 1×1-conv MLP weights become Dense
kernels.
"""
import re
from typing import Any, Mapping

import flax.linen as nn

from vision_models.convert import common
from vision_models.convert.metaformer import conv, linear
from vision_models.convert.variants import build, overrides
from vision_models.errors import ConfigError

SIZES = {'atto': 'a', 'tiny': 't', 'small': 's', 'base': 'b'}


def registry_name(timm_name: str) -> str:
  """`inception_next_tiny.sail_in1k` → `inception_next_t`; other timm sizes → `inception_next`."""
  match = re.match(r'^inception_next_([a-z]+)(?:\.|$)', timm_name)
  if match and match.group(1) in SIZES:
    return f'inception_next_{SIZES[match.group(1)]}'
  return 'inception_next'


def architecture(sd: common.StateDict) -> dict[str, Any]:
  """Our InceptionNeXt fields from the shapes of a timm state dict."""
  blocks = [re.fullmatch(r'stages\.(\d+)\.blocks\.(\d+)\.norm\.weight', k) for k in sd.tensors]
  blocks = [tuple(int(g) for g in m.groups()) for m in blocks if m]
  if not blocks:
    raise ConfigError(f'{sd.source}: not an InceptionNeXt state dict (no stages.*.blocks.*.norm tensors)')
  stages = max(s for s, _ in blocks) + 1
  depths = tuple(1 + max(j for s, j in blocks if s == i) for i in range(stages))
  dims = tuple(int(sd.tensors[f'stages.{i}.blocks.0.norm.weight'].shape[0]) for i in range(stages))
  ratios = tuple(int(sd.tensors[f'stages.{i}.blocks.0.mlp.fc1.weight'].shape[0]) / dims[i] for i in range(stages))
  mixer = 'stages.0.blocks.0.token_mixer'
  square, band = (sd.tensors[f'{mixer}.dwconv_{k}.weight'] for k in ('hw', 'w'))
  options = {'square_kernel_size': int(square.shape[-1]), 'band_kernel_size': int(band.shape[-1]),
             'branch_ratio': int(square.shape[0]) / dims[0]}
  defaults = {'square_kernel_size': 3, 'band_kernel_size': 11, 'branch_ratio': 0.125}
  options = {k: v for k, v in options.items() if v != defaults[k]}
  return dict(
      num_classes=int(sd.tensors['head.fc2.weight'].shape[0]) if 'head.fc2.weight' in sd else 0,
      depths=depths, dims=dims, mlp_ratios=tuple(int(r) if r == int(r) else r for r in ratios),
      mixer_options=options or None, layer_scale=1e-6 if 'stages.0.blocks.0.gamma' in sd else None,
      head_mlp_ratio=int(sd.tensors['head.fc1.weight'].shape[0]) / dims[-1])


@common.register_timm('inception_next_')
def from_timm(timm_name: str, state_dict: Mapping[str, Any], **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
  """A timm InceptionNeXt → `(module, variables)`; `kwargs` set other model fields (dtype, remat...)."""
  sd = common.StateDict(state_dict, f'timm {timm_name}')
  arch = architecture(sd)
  p: dict[str, Any] = {}
  stats: dict[str, Any] = {}

  def batch_norm(src: str) -> tuple[dict[str, Any], dict[str, Any]]:
    sd.skip(f'{src}.num_batches_tracked')
    return ({'scale': sd[f'{src}.weight'], 'bias': sd[f'{src}.bias']},
            {'mean': sd[f'{src}.running_mean'], 'var': sd[f'{src}.running_var']})

  p['stem_conv'] = conv(sd, 'stem.0')
  p['stem_norm'], stats['stem_norm'] = batch_norm('stem.1')
  for i, depth in enumerate(arch['depths']):
    if i > 0:
      down = f'stages_{i}_downsample'
      p[f'{down}_norm'], stats[f'{down}_norm'] = batch_norm(f'stages.{i}.downsample.0')
      p[f'{down}_conv'] = conv(sd, f'stages.{i}.downsample.1')
    for j in range(depth):
      src, dst = f'stages.{i}.blocks.{j}', f'stages_{i}_blocks_{j}'
      norm, norm_stats = batch_norm(f'{src}.norm')
      mixer = {k: conv(sd, f'{src}.token_mixer.{k}') for k in ('dwconv_hw', 'dwconv_w', 'dwconv_h')}
      p[dst] = {'token_mixer': mixer, 'norm': norm, 'mlp': {f'fc{k}': linear(sd, f'{src}.mlp.fc{k}') for k in (1, 2)}}
      stats[dst] = {'norm': norm_stats}
      if arch['layer_scale']:
        p[dst]['ls'] = {'gamma': sd[f'{src}.gamma']}
  p['head_fc1'] = linear(sd, 'head.fc1')
  p['head_norm'] = {'scale': sd['head.norm.weight'], 'bias': sd['head.norm.bias']}
  if arch['num_classes']:
    p['head_fc2'] = linear(sd, 'head.fc2')
  name = registry_name(timm_name)
  return build(name, {**overrides(name, arch), **kwargs}, {'params': p, 'batch_stats': stats}, sd, 32)
