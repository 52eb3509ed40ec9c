"""timm `nextvit_{small,base,large}` state dicts → our Next-ViT.

The depths and classes come from the tensor names and shapes. A state dict saved after timm's `reparameterize()`
(each block's pre-norm BN folded into the following q/k/v or fc1, and the key/value BN into k/v) converts too: a BN
the state dict lacks becomes the identity (scale 1, bias 0, mean 0, variance 1 − eps), which gives the same outputs.
"""
import re
from typing import Any, Mapping

import flax.linen as nn
import numpy as np

from vision_models.convert.common import StateDict, conv, linear, register_timm
from vision_models.convert.variants import build, overrides
from vision_models.errors import ConfigError
from vision_models.models import nextvit


def registry_name(timm_name: str) -> str:
  """`nextvit_small.bd_in1k` → `nextvit_small`."""
  base = timm_name.split('.')[0]
  return base if base in {f'nextvit_{s}' for s in nextvit.DEPTHS} else 'nextvit'


def architecture(sd: StateDict) -> dict[str, Any]:
  blocks = {(int(m[1]), int(m[2])) for k in sd.tensors if (m := re.match(r'stages\.(\d+)\.blocks\.(\d+)\.', k))}
  if not blocks or 'stem.0.conv.weight' not in sd:
    raise ConfigError(f'{sd.source}: not a Next-ViT state dict (no stem.0.conv / stages.*.blocks.* tensors)')
  depths = tuple(1 + max(j for i, j in blocks if i == s) for s in range(1 + max(i for i, _ in blocks)))
  stem = tuple(int(sd.tensors[f'stem.{i}.conv.weight'].shape[0]) for i in range(3))
  return dict(num_classes=int(sd.tensors['head.fc.weight'].shape[0]) if 'head.fc.weight' in sd else 0,
              depths=depths, stem_dims=stem)


def convert_state_dict(sd: StateDict, depths) -> dict[str, np.ndarray]:
  """Flat `{'params/...': array, 'batch_stats/...': array}` in our layout; marks every source tensor used."""
  out: dict[str, np.ndarray] = {}

  def put_bn(src: str, dst: str, width: int):
    if f'{src}.weight' not in sd:  # Folded away by reparameterize(): the identity.
      one, zero = np.ones(width, np.float32), np.zeros(width, np.float32)
      stats = (zero, np.full(width, 1 - nextvit.BN_EPS, np.float32))
      (out[f'params/{dst}/scale'], out[f'params/{dst}/bias']), (out[f'batch_stats/{dst}/mean'],
                                                                  out[f'batch_stats/{dst}/var']) = (one, zero), stats
      return
    out[f'params/{dst}/scale'], out[f'params/{dst}/bias'] = sd[f'{src}.weight'], sd[f'{src}.bias']
    out[f'batch_stats/{dst}/mean'], out[f'batch_stats/{dst}/var'] = sd[f'{src}.running_mean'], sd[f'{src}.running_var']
    sd.skip(f'{src}.num_batches_tracked')

  def put_pointwise(src: str, dst: str):
    w = sd[f'{src}.weight']
    out[f'params/{dst}/kernel'] = linear(w.reshape(w.shape[0], -1))
    if f'{src}.bias' in sd:
      out[f'params/{dst}/bias'] = sd[f'{src}.bias']

  def put_patch_embed(src: str, dst: str):
    if f'{src}.conv.weight' in sd:
      put_pointwise(f'{src}.conv', f'{dst}/conv')
      put_bn(f'{src}.norm', f'{dst}/norm', sd.tensors[f'{src}.conv.weight'].shape[0])

  def put_mhca_mlp(src: str, dst: str, mhca: str, norm: str, width: int):
    out[f'params/{dst}/mhca/group_conv3x3/kernel'] = conv(sd[f'{src}.{mhca}.group_conv3x3.weight'])
    put_bn(f'{src}.{mhca}.norm', f'{dst}/mhca/norm', sd.tensors[f'{src}.{mhca}.group_conv3x3.weight'].shape[0])
    put_pointwise(f'{src}.{mhca}.projection', f'{dst}/mhca/projection')
    put_bn(f'{src}.{norm}', f'{dst}/{norm}', width)
    put_pointwise(f'{src}.mlp.fc1', f'{dst}/mlp/fc1')
    put_pointwise(f'{src}.mlp.fc2', f'{dst}/mlp/fc2')

  for i in range(4):
    out[f'params/stem_{i}_conv/kernel'] = conv(sd[f'stem.{i}.conv.weight'])
    put_bn(f'stem.{i}.norm', f'stem_{i}_norm', sd.tensors[f'stem.{i}.conv.weight'].shape[0])
  for i, blocks in enumerate(nextvit.hybrid_layout(depths)):
    for j, (kind, width) in enumerate(blocks):
      src, dst = f'stages.{i}.blocks.{j}', f'stages_{i}_blocks_{j}'
      put_patch_embed(f'{src}.patch_embed', f'{dst}/patch_embed')
      if kind == 'ncb':
        put_mhca_mlp(src, dst, 'mhca', 'norm', width)
        continue
      mhsa = sd.tensors[f'{src}.e_mhsa.q.weight'].shape[0]
      heads = mhsa // 32
      put_bn(f'{src}.norm1', f'{dst}/norm1', mhsa)
      for s, d in (('q', 'query'), ('k', 'key'), ('v', 'value')):
        out[f'params/{dst}/e_mhsa/{d}_kernel'] = linear(sd[f'{src}.e_mhsa.{s}.weight']).reshape(mhsa, heads, -1)
        out[f'params/{dst}/e_mhsa/{d}_bias'] = sd[f'{src}.e_mhsa.{s}.bias'].reshape(heads, -1)
      out[f'params/{dst}/e_mhsa/out_kernel'] = linear(sd[f'{src}.e_mhsa.proj.weight']).reshape(heads, -1, mhsa)
      out[f'params/{dst}/e_mhsa/out_bias'] = sd[f'{src}.e_mhsa.proj.bias']
      if nextvit.SR_RATIOS[i] > 1:  # Keys and values pooled: a BN.
        put_bn(f'{src}.e_mhsa.norm', f'{dst}/e_mhsa/norm', mhsa)
      put_patch_embed(f'{src}.projection', f'{dst}/projection')
      put_mhca_mlp(src, dst, 'mhca', 'norm2', width)
  put_bn('norm', 'norm', sd.tensors[f'stages.{len(depths) - 1}.blocks.{depths[-1] - 1}.mlp.fc2.weight'].shape[0])
  if 'head.fc.weight' in sd:
    out['params/head/kernel'], out['params/head/bias'] = linear(sd['head.fc.weight']), sd['head.fc.bias']
  return out


@register_timm('nextvit_')
def from_timm(timm_name: str, state_dict: Mapping[str, Any], **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
  """A timm Next-ViT → `(module, variables)`; `kwargs` set other model fields (dtype, attn_impl, remat...)."""
  sd = StateDict(state_dict, f'timm {timm_name}')
  arch = architecture(sd)
  converted = convert_state_dict(sd, arch['depths'])
  name = registry_name(timm_name)
  return build(name, {**overrides(name, arch), **kwargs}, converted, sd, 64)
