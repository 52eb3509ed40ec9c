"""timm MetaFormer state dicts (`poolformer_*`, `poolformerv2_*`, `convformer_*`, `caformer_*`) → our MetaFormer.

The family comes from the name (GroupNorm and LayerNorm weights look alike); the rest from the shapes: depths, dims,
each stage's token mixer (attention has `qkv`, SepConv `pwconv1`, pooling nothing), norm and MLP biases, StarReLU,
layer / res scales, the head (Linear or MlpHead) and the classes. timm's 1×1-conv MLPs are Linear layers reshaped;
its fused `qkv` splits into our `[embed, heads, head_dim]` q/k/v kernels.
"""
import re
from typing import Any, Mapping

import flax.linen as nn
import numpy as np

from vision_models import models
from vision_models.convert import common
from vision_models.convert.variants import build, overrides
from vision_models.errors import ConfigError
from vision_models.models import metaformer

def registry_name(timm_name: str) -> str:
  """`caformer_s18.sail_in22k_ft_in1k_384` → `caformer_s18`; our names are timm's without the pretrained tag."""
  match = re.match(r'^(poolformerv2|poolformer|convformer|caformer)_([a-z]\d+)(?:\.|$)', timm_name)
  if match and '_'.join(match.groups()) in models.names():
    return '_'.join(match.groups())
  return 'metaformer'


def linear(sd: common.StateDict, src: str, bias: bool = True) -> dict[str, np.ndarray]:
  """A Linear, or a 1×1 conv used as one."""
  w = sd[f'{src}.weight']
  out = {'kernel': common.linear(w.reshape(w.shape[0], -1))}
  if bias:
    out['bias'] = sd[f'{src}.bias']
  return out


def conv(sd: common.StateDict, src: str) -> dict[str, np.ndarray]:
  return {'kernel': common.conv(sd[f'{src}.weight']), 'bias': sd[f'{src}.bias']}


def norm(sd: common.StateDict, src: str) -> dict[str, np.ndarray]:
  return {'scale': sd[f'{src}.weight'], **({'bias': sd[f'{src}.bias']} if f'{src}.bias' in sd else {})}


def star_relu(sd: common.StateDict, src: str) -> dict[str, np.ndarray]:
  return {'scale': sd[f'{src}.scale'], 'bias': sd[f'{src}.bias']}


def mixer_kind(sd: common.StateDict, src: str) -> str:
  if f'{src}.token_mixer.qkv.weight' in sd:
    return 'metaformer_attention'
  return 'sepconv' if f'{src}.token_mixer.pwconv1.weight' in sd else 'pooling'


def token_mixer(sd: common.StateDict, src: str, kind: str, head_dim: int) -> dict[str, Any]:
  src = f'{src}.token_mixer'
  if kind == 'sepconv':  # timm's SepConv has no biases.
    return {'pwconv1': linear(sd, f'{src}.pwconv1', False), 'act1': star_relu(sd, f'{src}.act1'),
            'dwconv': {'kernel': common.conv(sd[f'{src}.dwconv.weight'])},
            'pwconv2': linear(sd, f'{src}.pwconv2', False)}
  if kind == 'metaformer_attention':
    qkv = sd[f'{src}.qkv.weight']  # (3 · heads · head_dim, dim), rows ordered (q/k/v, head, channel)
    dim = qkv.shape[1]
    heads = max(dim // head_dim, 1)
    p = {f'{n}_kernel': w.T.reshape(dim, heads, -1) for n, w in zip(('query', 'key', 'value'), np.split(qkv, 3))}
    p['out_kernel'] = sd[f'{src}.proj.weight'].T.reshape(heads, -1, dim)
    return p
  return {}


def architecture(sd: common.StateDict, family: str) -> dict[str, Any]:
  """Our MetaFormer fields from the family and the shapes of a timm state dict."""
  blocks = [re.fullmatch(r'stages\.(\d+)\.blocks\.(\d+)\.norm1\.weight', k) for k in sd.tensors]
  blocks = [tuple(int(g) for g in m.groups()) for m in blocks if m]
  if not blocks:
    raise ConfigError(f'{sd.source}: not a MetaFormer state dict (no stages.*.blocks.*.norm1 tensors)')
  stages = max(s for s, _ in blocks) + 1
  depths = tuple(1 + max(j for s, j in blocks if s == i) for i in range(stages))
  dims = tuple(int(sd.tensors[f'stages.{i}.blocks.0.norm1.weight'].shape[0]) for i in range(stages))
  first = [f'stages.{i}.blocks.0' for i in range(stages)]
  stage_mixers = tuple(mixer_kind(sd, b) for b in first)
  mlp_head = 'head.fc.fc2.weight' in sd
  classes = sd.tensors['head.fc.fc2.weight' if mlp_head else 'head.fc.weight'] if (
      mlp_head or 'head.fc.weight' in sd) else None
  return dict(
      num_classes=int(classes.shape[0]) if classes is not None else 0, depths=depths, dims=dims,
      mixer=stage_mixers[0] if len(set(stage_mixers)) == 1 else stage_mixers,
      norm='group' if family.startswith('poolformer') else 'layer', norm_bias='stages.0.blocks.0.norm1.bias' in sd,
      norm_eps=1e-5 if family == 'poolformer' else 1e-6, downsample_norm='stem.norm.weight' in sd,
      mlp_act='star_relu' if 'stages.0.blocks.0.mlp.act.scale' in sd else 'gelu',
      mlp_bias='stages.0.blocks.0.mlp.fc1.bias' in sd,
      layer_scale=tuple(f'{b}.layer_scale1.scale' in sd for b in first),
      res_scale=tuple(f'{b}.res_scale1.scale' in sd for b in first),
      head='mlp' if mlp_head else 'linear')


def per_stage_scales(present: tuple[bool, ...], default: Any, fallback: float) -> Any:
  """Scale init values for the stages whose weights have the scale (the value is not in the weights: the variant's,
  else `fallback`); one value when the variant has one for all stages and the stages agree."""
  values = tuple((d if d is not None else fallback) if has else None
                 for has, d in zip(present, metaformer.per_stage(default, len(present), 'scale')))
  return values[0] if len(set(values)) == 1 and not isinstance(default, (tuple, list)) else values


@common.register_timm('poolformer_')
@common.register_timm('poolformerv2_')
@common.register_timm('convformer_')
@common.register_timm('caformer_')
def from_timm(timm_name: str, state_dict: Mapping[str, Any], **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
  """A timm MetaFormer baseline → `(module, variables)`; `kwargs` set other model fields (dtype, remat...)."""
  sd = common.StateDict(state_dict, f'timm {timm_name}')
  family = timm_name.split('_')[0]
  name = registry_name(timm_name)
  variant = models.create(name)
  arch = architecture(sd, family)
  arch['layer_scale'] = per_stage_scales(arch['layer_scale'], variant.layer_scale, 1e-6)
  arch['res_scale'] = per_stage_scales(arch['res_scale'], variant.res_scale, 1.0)
  head_dim = kwargs.get('head_dim', variant.head_dim)

  p = {'stem_conv': conv(sd, 'stem.conv')}
  if arch['downsample_norm']:
    p['stem_norm'] = norm(sd, 'stem.norm')
  for i, depth in enumerate(arch['depths']):
    if i > 0:
      if arch['downsample_norm']:
        p[f'stages_{i}_downsample_norm'] = norm(sd, f'stages.{i}.downsample.norm')
      p[f'stages_{i}_downsample_conv'] = conv(sd, f'stages.{i}.downsample.conv')
    for j in range(depth):
      src = f'stages.{i}.blocks.{j}'
      mlp = {f'fc{k}': linear(sd, f'{src}.mlp.fc{k}', arch['mlp_bias']) for k in (1, 2)}
      if arch['mlp_act'] == 'star_relu':
        mlp['act'] = star_relu(sd, f'{src}.mlp.act')
      block = {'norm1': norm(sd, f'{src}.norm1'), 'norm2': norm(sd, f'{src}.norm2'), 'mlp': mlp}
      mixer = token_mixer(sd, src, mixer_kind(sd, src), head_dim)
      if mixer:
        block['token_mixer'] = mixer
      for k in (1, 2):
        for scale in ('layer_scale', 'res_scale'):
          if f'{src}.{scale}{k}.scale' in sd:
            block[f'{scale}{k}'] = {'gamma': sd[f'{src}.{scale}{k}.scale']}
      p[f'stages_{i}_blocks_{j}'] = block
  p['head_norm'] = norm(sd, 'head.norm')
  if arch['num_classes']:
    if arch['head'] == 'mlp':
      p['head_fc'] = {'fc1': linear(sd, 'head.fc.fc1'), 'norm': norm(sd, 'head.fc.norm'),
                      'fc2': linear(sd, 'head.fc.fc2')}
    else:
      p['head_fc'] = linear(sd, 'head.fc')
  return build(name, {**overrides(name, arch), **kwargs}, {'params': p}, sd, 32)
