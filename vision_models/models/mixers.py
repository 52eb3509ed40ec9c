"""One registry of token mixers and channel mixers, so any operator can sit in any layer of any family.

Calling convention (every mixer): `module(tokens, train=train)` with `tokens [batch, prefix + h·w, dim]`, the
`prefix` leading tokens (class / distillation tokens) followed by an h x w grid laid out row-major. Hierarchical
(NHWC) backbones flatten their feature map to tokens with `prefix=0` (a free reshape) and back.

A factory gets keyword arguments `dim, num_heads, grid (h, w), prefix, impl, dtype, name` plus the mixer's own
options (`config.model.mixer_options`), and returns the module. `register_token_mixer` / `register_channel_mixer` add
operators; `token_mixer` / `channel_mixer` build them by name.

Per-layer placement: a model's `mixer` names the default token mixer and `mixer_overrides` maps global block ranges
`'a:b'` (half-open, like Python slices; `'a'` for one block; negative indices count from the end) to other mixer
names, e.g. `{'6:12': 'hyena2d'}`. `mixer_for_layer` resolves one block's mixer and validates the table.
"""
from typing import Any, Callable, Mapping

import flax.linen as nn

from vision_models.errors import ConfigError
from vision_models.models import layers

Factory = Callable[..., nn.Module]
TOKEN_MIXERS: dict[str, Factory] = {}
CHANNEL_MIXERS: dict[str, Factory] = {}


def register_token_mixer(name: str, factory: Factory) -> None:
  """Makes `mixer=name` available to every family built on this registry."""
  TOKEN_MIXERS[name] = factory


def register_channel_mixer(name: str, factory: Factory) -> None:
  CHANNEL_MIXERS[name] = factory


def _build(table: dict[str, Factory], kind: str, name: str, kwargs: dict[str, Any]) -> nn.Module:
  if name not in table:
    raise ConfigError(f'unknown {kind} {name!r}; choose one of {", ".join(sorted(table))} '
                      f'(vision_models.models.mixers.register_{kind.replace(" ", "_")} adds one)')
  try:
    return table[name](**kwargs)
  except TypeError as e:  # A wrong option in config.model.mixer_options: name it.
    raise ConfigError(f'{kind} {name!r}: {e} (check config.model.mixer_options)') from None


def token_mixer(name: str, *, dim: int, num_heads: int = 1, grid: tuple[int, int] | None = None, prefix: int = 0,
                impl: str = 'xla', dtype: Any = None, module_name: str | None = None, **options: Any) -> nn.Module:
  """Builds token mixer `name` (see the module docstring for the call contract)."""
  return _build(TOKEN_MIXERS, 'token mixer', name, dict(dim=dim, num_heads=num_heads, grid=grid, prefix=prefix,
                                                        impl=impl, dtype=dtype, name=module_name, **options))


def channel_mixer(name: str, *, dim: int, hidden_dim: int, dtype: Any = None, module_name: str | None = None,
                  **options: Any) -> nn.Module:
  """Builds channel mixer `name`: `module(tokens, train=train)` maps `[..., dim]` to `[..., dim]`."""
  return _build(CHANNEL_MIXERS, 'channel mixer', name, dict(dim=dim, hidden_dim=hidden_dim, dtype=dtype,
                                                            name=module_name, **options))


def layer_range(key: str, depth: int) -> range:
  """`'a:b'` / `'a'` (negative indices from the end) → the block indices it covers, validated against `depth`."""
  try:
    parts = [int(p) if p.strip() else None for p in str(key).split(':')]
  except ValueError:
    parts = []
  if len(parts) == 1 and parts[0] is not None:
    start = parts[0] + depth if parts[0] < 0 else parts[0]
    covered = range(start, start + 1)
  elif len(parts) == 2:
    covered = range(depth)[slice(*parts)]
  else:
    raise ConfigError(f"mixer_overrides key {key!r} is not a block range; write 'a:b' or 'a'")
  if not covered or covered.start < 0 or covered[-1] >= depth:
    raise ConfigError(f'mixer_overrides key {key!r} selects no block of a model with {depth} blocks')
  return covered


def mixer_for_layer(default: str, overrides: Mapping[str, str] | None, index: int, depth: int) -> str:
  """The token mixer of block `index`; overlapping override ranges are an error."""
  chosen = [(key, name) for key, name in (overrides or {}).items() if index in layer_range(key, depth)]
  if len(chosen) > 1:
    raise ConfigError(f'mixer_overrides ranges {", ".join(k for k, _ in chosen)} overlap at block {index}')
  return chosen[0][1] if chosen else default


register_token_mixer('attention', lambda *, num_heads, impl, dtype, name, qkv_bias=True, qk_norm=None, **_:
                     layers.Attention(num_heads, qkv_bias=qkv_bias, impl=impl, dtype=dtype, name=name, qk_norm=qk_norm))
register_channel_mixer('mlp', lambda *, hidden_dim, dtype, name, act=layers.gelu, **_: layers.Mlp(
    hidden_dim, act=act, dtype=dtype, name=name))
