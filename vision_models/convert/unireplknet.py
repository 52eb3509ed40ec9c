"""Official UniRepLKNet state dicts (AILab-CVC/UniRepLKNet `unireplknet.py`) → our UniRepLKNet.

Depths, widths, per-block kernel sizes and classes come from the tensor shapes; the name (`unireplknet_a` … `_xl`,
anything else → `unireplknet`) picks the registered variant the result is built from. Both the training form and a
state dict saved after the official `reparameterize_unireplknet()` (deploy form) convert.
"""
import re
from typing import Any, Mapping

import flax.linen as nn
import numpy as np

from vision_models import models
from vision_models.convert.common import StateDict, conv, linear
from vision_models.convert.variants import build, overrides
from vision_models.errors import ConfigError
from vision_models.models import unireplknet


def registry_name(name: str) -> str:
  """`unireplknet_s_in22k_to_in1k_384` → `unireplknet_s`; unknown → `unireplknet`."""
  match = re.match(r'^unireplknet_(xl|[afpntsbl])(?:_|\.|$)', name.lower())
  return f'unireplknet_{match[1]}' if match and f'unireplknet_{match[1]}' in models.names() else 'unireplknet'


def architecture(sd: StateDict) -> dict[str, Any]:
  shape = lambda key: tuple(sd.tensors[key].shape)  # noqa: E731  (peek without marking as used)
  blocks = {(int(m[1]), int(m[2])) for k in sd.tensors if (m := re.match(r'stages\.(\d+)\.(\d+)\.', k))}
  if not blocks or 'downsample_layers.0.0.weight' not in sd:
    raise ConfigError(f'{sd.source}: not a UniRepLKNet state dict (no downsample_layers.0.0 / stages.*.* tensors)')
  depths = tuple(1 + max(j for i, j in blocks if i == s) for s in range(1 + max(i for i, _ in blocks)))

  def kernel(i, j):
    key = f'stages.{i}.{j}.dwconv.lk_origin.weight'
    return shape(key if key in sd else f'stages.{i}.{j}.dwconv.weight')[-1]

  sizes = tuple(tuple(kernel(i, j) for j in range(d)) for i, d in enumerate(depths))
  deploy = 'stages.0.0.pwconv2.2.weight' not in sd
  return dict(num_classes=shape('head.weight')[0] if 'head.weight' in sd else 0, depths=depths,
              dims=tuple(shape(f'downsample_layers.{i}.{3 if i == 0 else 0}.weight')[0] for i in range(len(depths))),
              kernel_sizes=None if unireplknet.KERNEL_SIZES.get(depths) == sizes else sizes, deploy=deploy,
              layer_scale=None if deploy or 'stages.0.0.gamma' not in sd else 1e-6)


def convert_state_dict(sd: StateDict, arch: dict[str, Any]) -> dict[str, np.ndarray]:
  """Flat `{'params/...': array, 'batch_stats/...': array}` in our layout; marks every source tensor used."""
  out: dict[str, np.ndarray] = {}

  def put(dst: str, value: np.ndarray):
    out[f'params/{dst}'] = value

  def put_bn(src: str, dst: str):
    put(f'{dst}/scale', sd[f'{src}.weight'])
    put(f'{dst}/bias', sd[f'{src}.bias'])
    out[f'batch_stats/{dst}/mean'], out[f'batch_stats/{dst}/var'] = sd[f'{src}.running_mean'], sd[f'{src}.running_var']
    sd.skip(f'{src}.num_batches_tracked')

  def put_affine(src: str, dst: str, kernel_fn):
    put(f'{dst}/kernel', kernel_fn(sd[f'{src}.weight']))
    if f'{src}.bias' in sd:
      put(f'{dst}/bias', sd[f'{src}.bias'])

  def put_ln(src: str, dst: str):
    put(f'{dst}/scale', sd[f'{src}.weight'])
    put(f'{dst}/bias', sd[f'{src}.bias'])

  pointwise = lambda w: linear(w.reshape(w.shape[0], -1))  # noqa: E731  (a 1×1 conv or a Linear)
  for conv_index, norm_index, dst in ((0, 1, 'stem_0'), (3, 4, 'stem_1')):  # conv, LN, GELU, conv, LN
    put_affine(f'downsample_layers.0.{conv_index}', f'{dst}_conv', conv)
    put_ln(f'downsample_layers.0.{norm_index}', f'{dst}_norm')
  for i in range(1, len(arch['depths'])):
    put_affine(f'downsample_layers.{i}.0', f'downsample_{i}_conv', conv)
    put_ln(f'downsample_layers.{i}.1', f'downsample_{i}_norm')
  for i, depth in enumerate(arch['depths']):
    for j in range(depth):
      src, dst = f'stages.{i}.{j}', f'stages_{i}_{j}'
      if f'{src}.dwconv.lk_origin.weight' in sd:
        put_affine(f'{src}.dwconv.lk_origin', f'{dst}/dwconv/lk_origin', conv)
        if not arch['deploy']:
          put_bn(f'{src}.dwconv.origin_bn', f'{dst}/dwconv/origin_bn')
          for k, r in unireplknet.BRANCHES[sd.tensors[f'{src}.dwconv.lk_origin.weight'].shape[-1]]:
            put(f'{dst}/dwconv/dil_conv_k{k}_{r}', conv(sd[f'{src}.dwconv.dil_conv_k{k}_{r}.weight']))
            put_bn(f'{src}.dwconv.dil_bn_k{k}_{r}', f'{dst}/dwconv/dil_bn_k{k}_{r}')
      else:
        put_affine(f'{src}.dwconv', f'{dst}/dwconv', conv)
      put_affine(f'{src}.se.down', f'{dst}/se/down', pointwise)
      put_affine(f'{src}.se.up', f'{dst}/se/up', pointwise)
      put_affine(f'{src}.pwconv1.1', f'{dst}/pwconv1', linear)
      put(f'{dst}/grn/gamma', sd[f'{src}.act.1.gamma'].reshape(-1))
      put_affine(f'{src}.pwconv2.0', f'{dst}/pwconv2', linear)
      if not arch['deploy']:
        put_bn(f'{src}.norm', f'{dst}/norm')
        put(f'{dst}/grn/beta', sd[f'{src}.act.1.beta'].reshape(-1))
        put_bn(f'{src}.pwconv2.2', f'{dst}/pwconv2_bn')
        if arch['layer_scale']:
          put(f'{dst}/ls/gamma', sd[f'{src}.gamma'])
  put_ln('norm', 'norm')
  if 'head.weight' in sd:
    put_affine('head', 'head', linear)
  return out


def from_unireplknet(name: str, state_dict: Mapping[str, Any], **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
  """An official UniRepLKNet state dict (training or deploy form) → `(module, variables)`; `name` like
  `unireplknet_s`; `kwargs` set other model fields (dtype, depthwise_impl, remat...)."""
  sd = StateDict(state_dict, f'UniRepLKNet {name}')
  arch = architecture(sd)
  converted = convert_state_dict(sd, arch)
  registered = registry_name(name)
  # Defaults stand where the checkpoint says nothing: the table's kernel sizes; the deploy form has no layer scale.
  fields = {k: v for k, v in arch.items()
            if not (k == 'kernel_sizes' and v is None) and not (k == 'layer_scale' and arch['deploy'])}
  return build(registered, {**overrides(registered, fields), **kwargs}, converted, sd, 32)
