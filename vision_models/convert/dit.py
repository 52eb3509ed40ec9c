"""The official DiT checkpoints (facebookresearch/DiT `models.py` state dicts, e.g. `DiT-XL-2-256x256.pt`) → our DiT.

The layout is read from the tensors themselves (width, depth, patch, latent channels, input size from `pos_embed`,
classes, learned sigma); only the number of heads comes from the name (`"DiT-XL/2"`) or a keyword override.
"""
import re
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp

from vision_models import models
from vision_models.convert import common
from vision_models.errors import ConfigError
from vision_models.models import dit

Rule = tuple[str, str, Callable[[Any], Any]]  # (our flat variable path, source key, transform)


def _qkv(i: int, heads: int) -> Callable[[Any], Any]:
  """The i-th (q, k, v) block of timm's fused qkv Linear (3d, d), as our `[d, heads, head_dim]` kernel."""
  return lambda w: w.reshape(3, heads, w.shape[0] // (3 * heads), w.shape[1])[i].transpose(2, 0, 1)


def _qkv_bias(i: int, heads: int) -> Callable[[Any], Any]:
  return lambda b: b.reshape(3, heads, -1)[i]


def _out_proj(heads: int) -> Callable[[Any], Any]:
  return lambda w: w.T.reshape(heads, -1, w.shape[0])  # (out, in) → [heads, head_dim, out]


def rules(depth: int, num_heads: int) -> list[Rule]:
  """Every (target, source, transform) of the conversion. The transforms only reshape and transpose, so they also
  run on `jax.ShapeDtypeStruct`s under `jax.eval_shape` (the layout test of the full-size models)."""
  same = lambda x: x
  out: list[Rule] = [
      ('constants/pos_embed', 'pos_embed', same),
      ('params/x_embedder/kernel', 'x_embedder.proj.weight', common.conv),
      ('params/x_embedder/bias', 'x_embedder.proj.bias', same),
      ('params/y_embedder/embedding', 'y_embedder.embedding_table.weight', same),
  ]

  def dense(ours: str, theirs: str) -> None:
    out.extend([(f'params/{ours}/kernel', f'{theirs}.weight', common.linear),
                (f'params/{ours}/bias', f'{theirs}.bias', same)])

  dense('t_embedder_mlp_0', 't_embedder.mlp.0')
  dense('t_embedder_mlp_2', 't_embedder.mlp.2')
  for n in range(depth):
    ours, theirs = f'params/blocks_{n}', f'blocks.{n}'
    for i, qkv in enumerate(('query', 'key', 'value')):
      out.append((f'{ours}/mixer/{qkv}_kernel', f'{theirs}.attn.qkv.weight', _qkv(i, num_heads)))
      out.append((f'{ours}/mixer/{qkv}_bias', f'{theirs}.attn.qkv.bias', _qkv_bias(i, num_heads)))
    out.append((f'{ours}/mixer/out_kernel', f'{theirs}.attn.proj.weight', _out_proj(num_heads)))
    out.append((f'{ours}/mixer/out_bias', f'{theirs}.attn.proj.bias', same))
    dense(f'blocks_{n}/mlp/fc1', f'{theirs}.mlp.fc1')
    dense(f'blocks_{n}/mlp/fc2', f'{theirs}.mlp.fc2')
    dense(f'blocks_{n}/adaLN_modulation', f'{theirs}.adaLN_modulation.1')
  dense('final_adaLN_modulation', 'final_layer.adaLN_modulation.1')
  dense('final_linear', 'final_layer.linear')
  return out


def _shape(state_dict: Mapping[str, Any], key: str, source: str) -> tuple[int, ...]:
  if key not in state_dict:
    raise ConfigError(f'{source}: the state dict has no tensor {key!r}; is it an official DiT checkpoint?')
  return tuple(state_dict[key].shape)


def config_from_state_dict(name: str, state_dict: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
  """`models.create('dit', **config)` keywords: the variant of `name` ("DiT-XL/2"), what the tensors say, then
  `overrides` (e.g. `num_heads` for a non-standard width)."""
  match = re.fullmatch(r'DiT-(S|B|L|XL)/([248])', name)
  if not match:
    raise ConfigError(f'unknown DiT name {name!r}; use the official form like "DiT-XL/2" '
                      f'({", ".join(f"DiT-{s.upper()}/{p}" for s in dit.VARIANTS for p in dit.PATCHES)})')
  variant_hidden, _, heads = dit.VARIANTS[match.group(1).lower()]
  source = f'DiT checkpoint {name}'
  hidden, in_channels, patch, _ = _shape(state_dict, 'x_embedder.proj.weight', source)
  tokens = _shape(state_dict, 'pos_embed', source)[1]
  side = int(round(tokens ** 0.5)) * patch
  out_channels = _shape(state_dict, 'final_layer.linear.weight', source)[0] // (patch * patch)
  depth = len({k.split('.')[1] for k in state_dict if k.startswith('blocks.')})
  config = dict(input_size=side, patch_size=patch, in_channels=in_channels, hidden_size=hidden, depth=depth,
                num_heads=heads, num_classes=_shape(state_dict, 'y_embedder.embedding_table.weight', source)[0] - 1,
                class_dropout_prob=0.1, learn_sigma=out_channels == 2 * in_channels)
  if hidden != variant_hidden and 'num_heads' not in overrides:
    raise ConfigError(f'{source}: width {hidden} is not that of {name}; pass num_heads=... to from_dit')
  return {**config, **overrides}


def from_dit(name: str, state_dict: Mapping[str, Any], **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
  """`(module, variables)` from an official DiT state dict (numpy arrays or torch tensors); the module is called as
  `module.apply(variables, x_nhwc, t, y)`. Raises ConfigError when a tensor is missing, unused or misshapen."""
  config = config_from_state_dict(name, state_dict, **overrides)
  module = models.create('dit', **config)
  sd = common.StateDict(state_dict, f'DiT checkpoint {name}')
  converted = {target: fn(sd[src]) for target, src, fn in rules(config['depth'], config['num_heads'])}
  sd.check_all_used()
  size, channels = config['input_size'], config['in_channels']
  sample = (jnp.zeros((1, size, size, channels)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
  return module, common.fill(module, sample, converted, sd.source)
