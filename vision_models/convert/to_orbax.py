"""Converts a timm checkpoint file into an Orbax checkpoint our models load.

  python -m vision_models.convert.to_orbax --timm vit_base_patch16_224 --weights model.safetensors --out DIR

writes `DIR/variables` (Orbax: the `params` collection, and `batch_stats` where the model has BatchNorm) and
`DIR/model.json`: our registry `name` and the `kwargs` that rebuild the module (`models.create(name, **kwargs)`), the
`image_size` the weights fix (null when any works) and the source. `load(DIR)` gives `(module, variables)` back.
Weights: `.safetensors` (read without torch), or `.pth` / `.pt` / `.bin` (torch; training checkpoints that wrap the
weights under `model` / `state_dict` are unwrapped).
"""
import argparse
import json
import os
import sys
from typing import Any, Mapping

import flax.linen as nn
import orbax.checkpoint as ocp

from vision_models import models
from vision_models.convert import from_timm
from vision_models.convert.variants import closest_name, square_side
from vision_models.errors import ConfigError


def load_state_dict(path: str) -> Mapping[str, Any]:
  """A timm state dict from a safetensors or torch file."""
  if not os.path.isfile(path):
    raise ConfigError(f'--weights {path!r} is not a file')
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file
    try:
      return load_file(path)
    except (TypeError, ValueError):  # bfloat16 tensors have no numpy dtype: read them through torch.
      from safetensors.torch import load_file as load_torch
      return load_torch(path)
  if path.endswith(('.pth', '.pt', '.bin')):
    import torch
    state = torch.load(path, map_location='cpu', weights_only=True)
    for key in ('model', 'state_dict', 'model_ema', 'state_dict_ema'):
      if isinstance(state.get(key), Mapping):
        return state[key]
    return state
  raise ConfigError(f'--weights {path!r}: expected a .safetensors, .pth, .pt or .bin file')


def native_image_size(module: nn.Module, params: Mapping[str, Any]) -> int | None:
  """The resolution the weights fix (a learned position embedding's grid, a Mixer's patch count); None if any works."""
  patch = getattr(module, 'patch_size', 1)
  if 'pos_embed' in params:
    rows = params['pos_embed'].shape[1]
    if not getattr(module, 'no_embed_class', False):
      rows -= int(module.pool == 'token') + int(module.distilled)
    return square_side(rows) * patch
  mixing = params.get('blocks_0', {}).get('mlp_tokens')
  return square_side(mixing['fc1']['kernel'].shape[0]) * patch if mixing else None


def convert(timm_name: str, weights: str, out: str, **kwargs: Any) -> dict[str, Any]:
  """Converts `weights` and writes `out/variables` and `out/model.json`; returns what model.json holds."""
  module, variables = from_timm(timm_name, load_state_dict(weights), **kwargs)
  name, model_kwargs = closest_name(module)
  out = os.path.abspath(out)
  if os.path.exists(os.path.join(out, 'variables')):
    raise ConfigError(f'--out {out!r} already holds a checkpoint; choose a new directory')
  os.makedirs(out, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(out, 'variables'), variables)
  checkpointer.wait_until_finished()
  spec = {'name': name, 'kwargs': model_kwargs, 'image_size': native_image_size(module, variables['params']),
          'timm_name': timm_name, 'weights': os.path.abspath(weights),
          'param_count': models.param_count(variables['params'])}
  with open(os.path.join(out, 'model.json'), 'w') as f:
    json.dump(spec, f, indent=2)
  return spec


def load(directory: str) -> tuple[nn.Module, dict[str, Any]]:
  """`(module, variables)` from a directory `convert` wrote."""
  directory = os.path.abspath(directory)
  with open(os.path.join(directory, 'model.json')) as f:
    spec = json.load(f)
  module = models.create(spec['name'], **spec['kwargs'])
  return module, ocp.StandardCheckpointer().restore(os.path.join(directory, 'variables'))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--timm', required=True, help='timm model name, e.g. convnext_tiny or vit_base_patch16_384')
  parser.add_argument('--weights', required=True, help='the state dict: .safetensors, .pth, .pt or .bin')
  parser.add_argument('--out', required=True, help='output directory (variables/ and model.json)')
  parser.add_argument('--model-kwargs', default='{}',
                      help='JSON of model fields the weights cannot tell, e.g. \'{"num_heads": 4}\'')
  args = parser.parse_args(argv)
  try:
    kwargs = json.loads(args.model_kwargs)
    spec = convert(args.timm, args.weights, args.out, **kwargs)
  except json.JSONDecodeError as e:
    print(f'error: --model-kwargs is not JSON ({e})', file=sys.stderr)
    return 2
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{args.timm} → {spec["name"]} {spec["kwargs"]}: {spec["param_count"]:,} parameters in {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
