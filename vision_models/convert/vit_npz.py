"""The official ViT and MLP-Mixer `.npz` checkpoints → our ViT / Mixer.

Both layouts of google-research/vision_transformer (`Transformer/encoderblock_N/{LayerNorm_0,
MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3}`, `Transformer/posembed_input/pos_embedding` with a row for
the class token) and big_vision (`MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0`, a top-level
`pos_embedding` of the patches only, optionally scan-stacked `Transformer/encoderblock/...`) load, as do the Mixer
checkpoints (`MixerBlock_N/{token_mixing,channel_mixing}`). The architecture comes from the shapes; `name` must agree
with it (or be the bare `vit` / `mixer`). `image_size` resamples a ViT's position embedding (bilinear) for another
resolution. Note: these models were trained with Flax's tanh GELU; ours is timm's exact GELU (as timm runs them).
"""
import os
import re
from typing import Any, Mapping

import flax.linen as nn
import numpy as np
from flax import traverse_util

from vision_models import models
from vision_models.convert.common import StateDict
from vision_models.convert.variants import build, overrides, square_side
from vision_models.errors import ConfigError
from vision_models.models import layers

PREFIXES = ('opt/target/', 'params/img/', 'params/', '')  # vit_jax's old optimizer dump, big_vision's (SigLIP) params
ARCH = ('patch_size', 'width', 'depth', 'num_heads', 'mlp_dim', 'tokens_mlp_dim', 'channels_mlp_dim')


def read(path_or_dict: str | os.PathLike | Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The parameters of a checkpoint as a flat `{'a/b/kernel': array}` dict, prefixes removed and scan-stacked
  encoder blocks split into `encoderblock_N`."""
  if isinstance(path_or_dict, (str, os.PathLike)):
    with np.load(path_or_dict, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  elif any(isinstance(v, Mapping) for v in path_or_dict.values()):
    arrays = traverse_util.flatten_dict(dict(path_or_dict), sep='/')
  else:
    arrays = dict(path_or_dict)
  for prefix in PREFIXES:
    if f'{prefix}embedding/kernel' in arrays or f'{prefix}stem/kernel' in arrays:
      arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
      break
  else:
    raise ConfigError('not a ViT or Mixer checkpoint: no embedding/kernel or stem/kernel')
  stacked = 'Transformer/encoderblock/'
  for key in [k for k in arrays if k.startswith(stacked)]:
    value = arrays.pop(key)
    for i in range(value.shape[0]):
      arrays[f'Transformer/encoderblock_{i}/{key[len(stacked):]}'] = value[i]
  return arrays


def _count(sd: StateDict, pattern: str) -> int:
  return len([k for k in sd.tensors if re.fullmatch(pattern, k)])


def _ln(sd: StateDict, src: str) -> dict[str, np.ndarray]:
  return {'scale': sd[f'{src}/scale'], 'bias': sd[f'{src}/bias']}


def _dense(sd: StateDict, src: str) -> dict[str, np.ndarray]:
  return {'kernel': sd[f'{src}/kernel'], 'bias': sd[f'{src}/bias']}


def _first(sd: StateDict, *keys: str) -> str | None:
  return next((k for k in keys if k in sd), None)


def _vit(sd: StateDict, image_size: int | None) -> tuple[dict[str, Any], dict[str, Any], int]:
  """(our ViT fields, params, image size) from a ViT checkpoint."""
  patch, _, _, width = sd.tensors['embedding/kernel'].shape
  block0 = 'Transformer/encoderblock_0/'
  mha = 'MultiHeadDotProductAttention_' + ('1' if f'{block0}MultiHeadDotProductAttention_1/query/kernel' in sd else '0')
  ln2 = 'LayerNorm_' + ('2' if f'{block0}LayerNorm_2/scale' in sd else '1')
  mlp = 'MlpBlock_' + ('3' if f'{block0}MlpBlock_3/Dense_0/kernel' in sd else '0')
  has_cls = 'cls' in sd
  arch = dict(patch_size=int(patch), width=int(width),
              depth=_count(sd, r'Transformer/encoderblock_\d+/LayerNorm_0/scale'),
              num_heads=int(sd.tensors[f'{block0}{mha}/query/kernel'].shape[1]),
              mlp_dim=int(sd.tensors[f'{block0}{mlp}/Dense_0/kernel'].shape[-1]),
              num_classes=int(sd.tensors['head/kernel'].shape[-1]) if 'head/kernel' in sd else 0,
              pool='token' if has_cls else 'gap')
  if not has_cls:
    arch['fc_norm'] = False  # encoder_norm normalises every token, then the mean.
  p = {'patch_embed': _dense(sd, 'embedding'), 'norm': _ln(sd, 'Transformer/encoder_norm')}
  if has_cls:
    p['cls_token'] = sd['cls']
  pos_key = _first(sd, 'Transformer/posembed_input/pos_embedding', 'Transformer/pos_embedding', 'pos_embedding')
  if pos_key is None:  # big_vision's fixed sin-cos embedding is not stored.
    arch['posemb'] = 'sincos2d'
    native = image_size
  else:
    pos = sd[pos_key]
    arch['no_embed_class'] = has_cls and square_side(pos.shape[1]) is not None
    prefix = int(has_cls and not arch['no_embed_class'])
    side = square_side(pos.shape[1] - prefix)
    if side is None:
      raise ConfigError(f'{sd.source}: {pos_key} has {pos.shape[1]} rows, not a square grid')
    native = side * arch['patch_size']
    if image_size is not None and image_size != native:
      if image_size % arch['patch_size']:
        raise ConfigError(f'image_size={image_size} is not a multiple of the patch size {arch["patch_size"]}')
      new = image_size // arch['patch_size']
      grid = np.asarray(layers.resample_posemb(pos[0, prefix:], (new, new)))
      pos = np.concatenate([pos[:, :prefix], grid[None]], axis=1)
    p['pos_embed'] = pos
  if image_size is None and native is None:
    raise ConfigError(f'{sd.source}: the checkpoint has no position embedding; pass image_size=')
  for i in range(arch['depth']):
    src = f'Transformer/encoderblock_{i}/'
    attn = {f'{n}_{t}': sd[f'{src}{mha}/{n}/{t}'] for n in ('query', 'key', 'value', 'out') for t in ('kernel', 'bias')}
    p[f'blocks_{i}'] = {'norm1': _ln(sd, f'{src}LayerNorm_0'), 'norm2': _ln(sd, f'{src}{ln2}'), 'attn': attn,
                        'mlp': {'fc1': _dense(sd, f'{src}{mlp}/Dense_0'), 'fc2': _dense(sd, f'{src}{mlp}/Dense_1')}}
  if arch['num_classes']:
    p['head'] = _dense(sd, 'head')
  return arch, p, image_size or native


def _mixer(sd: StateDict, image_size: int | None) -> tuple[dict[str, Any], dict[str, Any], int]:
  """(our Mixer fields, params, image size) from a Mixer checkpoint."""
  patch, _, _, width = sd.tensors['stem/kernel'].shape
  seq, tokens_mlp = sd.tensors['MixerBlock_0/token_mixing/Dense_0/kernel'].shape
  native = square_side(seq) * int(patch)
  if image_size is not None and image_size != native:
    raise ConfigError(f'{sd.source}: a Mixer runs only at its training resolution {native} (its token-mixing MLP '
                      f'takes {seq} patches); image_size={image_size} cannot be used')
  arch = dict(patch_size=int(patch), width=int(width), depth=_count(sd, r'MixerBlock_\d+/LayerNorm_0/scale'),
              tokens_mlp_dim=int(tokens_mlp),
              channels_mlp_dim=int(sd.tensors['MixerBlock_0/channel_mixing/Dense_0/kernel'].shape[-1]),
              num_classes=int(sd.tensors['head/kernel'].shape[-1]) if 'head/kernel' in sd else 0)
  p = {'stem': _dense(sd, 'stem'), 'norm': _ln(sd, 'pre_head_layer_norm')}
  for i in range(arch['depth']):
    src = f'MixerBlock_{i}/'
    mix = lambda kind: {'fc1': _dense(sd, f'{src}{kind}/Dense_0'), 'fc2': _dense(sd, f'{src}{kind}/Dense_1')}  # noqa
    p[f'blocks_{i}'] = {'norm1': _ln(sd, f'{src}LayerNorm_0'), 'norm2': _ln(sd, f'{src}LayerNorm_1'),
                        'mlp_tokens': mix('token_mixing'), 'mlp_channels': mix('channel_mixing')}
  if arch['num_classes']:
    p['head'] = _dense(sd, 'head')
  return arch, p, native


def from_vit_npz(path_or_dict: str | os.PathLike | Mapping[str, Any], name: str,
                 image_size: int | None = None, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
  """`(module, variables)` from an official ViT / Mixer checkpoint (a `.npz` path or its arrays) for our registered
  model `name` (e.g. `vit_b16`, `mixer_b16`, or the bare `vit` / `mixer`); `kwargs` set other model fields."""
  arrays = read(path_or_dict)
  source = f'checkpoint {path_or_dict}' if isinstance(path_or_dict, (str, os.PathLike)) else 'checkpoint'
  sd = StateDict(arrays, source)
  family = 'vit' if 'embedding/kernel' in sd else 'mixer'
  if type(models.create(name)).__name__.lower() != family:
    raise ConfigError(f'{source} is a {family} checkpoint but the model name is {name!r}')
  arch, params, size = (_vit if family == 'vit' else _mixer)(sd, image_size)
  changed = overrides(name, arch)
  if name != family and any(k in changed for k in ARCH):
    wrong = ', '.join(f'{k}={changed[k]}' for k in ARCH if k in changed)
    raise ConfigError(f'{source} does not match {name!r}: the checkpoint has {wrong}; use the right name or '
                      f'{family!r}')
  return build(name, {**changed, **kwargs}, {'params': params}, sd, size)
