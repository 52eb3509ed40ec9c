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

Options (`mixer_options`): a flat key goes to every mixer of the model whose factory names it (`kernel_size` reaches
`dwconv` and `sepconv`, not `attention`); a key that is a mixer's name holds options for that mixer only, e.g.
`{'window_attention': {'window': 4}}`. `select_options` does that split and `check_options` rejects keys no mixer
of the model takes. Prefix tokens: see `mixer_ops` (local attention: global for them; conv/pool: the grid mean).

Registered token mixers: attention, identity, window_attention, grid_attention (and their relative-position-bias
forms window_attention_relpos, grid_attention_relpos: MaxViT's), linear_attention, pooling, dwconv, inception_dwconv,
sepconv, gated_conv, hyena, hyena2d; the families add metaformer_attention, mhca and e_mhsa (Next-ViT) and
dilated_reparam (UniRepLKNet) when `vision_models.models` is imported. Channel mixers: mlp (exact GELU), mlp_tanh,
swiglu.

Families on this registry: ViT, DiT, ConvNeXt, MetaFormer (PoolFormer, ConvFormer, CAFormer), InceptionNeXt, MaxViT,
Next-ViT, UniRepLKNet. A MaxViT block has two token mixers (block, grid attention), as has a Next-ViT transformer
block (E-MHSA, MHCA): there `mixer` and a `mixer_overrides` value are one name for both or one per mixer
(`block_mixers`).
"""
import inspect
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax.linen as nn

from vision_models.errors import ConfigError
from vision_models.models import hyena, layers, mixer_ops as ops

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


def block_mixers(value: str | Sequence[str], slots: int, where: str) -> tuple[str, ...]:
  """The token mixers of a block with `slots` of them (MaxViT: block and grid attention; Next-ViT's NTB: attention
  and convolution): one name fills every slot, a sequence names one mixer per slot."""
  names = (value,) * slots if isinstance(value, str) else tuple(value)
  if len(names) != slots or not all(isinstance(n, str) for n in names):
    raise ConfigError(f'{where}: {value!r} must be one mixer name or {slots} of them (one per token mixer of the '
                      f'block)')
  return names


STANDARD = ('dim', 'num_heads', 'hidden_dim', 'grid', 'prefix', 'impl', 'dtype', 'name')


def _named_options(factory: Factory) -> set[str]:
  """The keyword arguments a factory names (its options); `**kwargs` catch-alls don't count."""
  kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
  return {p.name for p in inspect.signature(factory).parameters.values() if p.kind in kinds} - set(STANDARD)


def _table(name: str) -> dict[str, Factory]:
  return TOKEN_MIXERS if name in TOKEN_MIXERS else CHANNEL_MIXERS


def select_options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
  """The options mixer `name` gets from a model's `mixer_options`: the flat keys its factory names, then the
  entries under its own name (all of them: a wrong one is a ConfigError when the mixer is built)."""
  options = dict(options or {})
  table = _table(name)
  named = _named_options(table[name]) if name in table else set()
  chosen = {k: v for k, v in options.items() if k in named and k not in TOKEN_MIXERS and k not in CHANNEL_MIXERS}
  own = options.get(name) or {}
  for key in own:
    if key not in named:
      raise ConfigError(f'mixer_options[{name!r}] has {key!r}, which mixer {name!r} does not take; it takes '
                        f'{", ".join(sorted(named)) or "no options"}')
  return {**chosen, **dict(own.items())}


def check_options(names: Iterable[str], options: Mapping[str, Any] | None) -> None:
  """Rejects `mixer_options` keys that no mixer in `names` (the model's mixers) takes."""
  names = set(names)
  taken = set().union(*(_named_options(_table(n)[n]) for n in names if n in _table(n)))
  for key in options or {}:  # Options under a mixer's name may wait for a run that uses it (operator studies).
    if key not in TOKEN_MIXERS and key not in CHANNEL_MIXERS and key not in taken:
      raise ConfigError(f'mixer_options key {key!r} is taken by none of this model\'s mixers '
                        f'({", ".join(sorted(names))}); they take {", ".join(sorted(taken)) or "no options"}')


def parallel_from_sequential(params: Mapping[str, Any]) -> dict[str, Any]:
  """Maps a sequential model's params into the `parallel_blocks=True` layout: blocks 2i and 2i+1 become the branches
  0 and 1 of parallel block i (each of their entries `k` becomes `k_0` / `k_1`); other entries stay."""
  depth = sum(k.startswith('blocks_') for k in params)
  if depth % 2:
    raise ConfigError(f'parallel blocks pair the blocks: a depth of {depth} is odd')
  out = {k: v for k, v in params.items() if not k.startswith('blocks_')}
  for i in range(depth // 2):
    out[f'blocks_{i}'] = {f'{k}_{b}': v for b in (0, 1) for k, v in params[f'blocks_{2 * i + b}'].items()}
  return out


def _attention(cls=layers.Attention, **fixed):
  def factory(*, num_heads, impl, dtype, name, qkv_bias=True, dropout=0.0, qkv_init=None, qk_norm=None,
              key_length=None, **_):
    return cls(num_heads, qkv_bias=qkv_bias, dropout=dropout, impl=impl, dtype=dtype, qkv_init=qkv_init,
               qk_norm=qk_norm, key_length=key_length, name=name, **fixed)
  return factory


def _local(dilated: bool):
  def factory(*, num_heads, grid, prefix, impl, dtype, name, window=7, qkv_bias=True, dropout=0.0, qkv_init=None,
              qk_norm=None, **_):
    return ops.LocalAttention(num_heads, qkv_bias=qkv_bias, dropout=dropout, impl=impl, dtype=dtype,
                              qkv_init=qkv_init, qk_norm=qk_norm, grid=grid, prefix=prefix, window=window,
                              dilated=dilated, name=name)
  return factory


def _local_relpos(dilated: bool):
  def factory(*, num_heads, grid, prefix, impl, dtype, name, window=7, qkv_bias=True, dropout=0.0, qkv_init=None,
              qk_norm=None, **_):
    return ops.RelPosLocalAttention(num_heads, grid, prefix, window, dilated, qkv_bias, dropout, impl, qkv_init,
                                    qk_norm, dtype, name=name)
  return factory


def _hyena(two_d: bool):
  def factory(*, grid, impl, dtype, name, order=2, filter_width=64, emb_dim=33, short_kernel=3, dropout=0.0, **_):
    opts = dict(order=order, filter_width=filter_width, emb_dim=emb_dim, short_kernel=short_kernel, impl=impl,
                dropout=dropout, dtype=dtype, name=name)
    return hyena.HyenaMixer2D(grid=grid, **opts) if two_d else hyena.HyenaMixer(**opts)
  return factory


def _conv(conv_impl: str | None, impl: str) -> str:
  """Conv mixers: the `conv_impl` option (ConvNeXt passes its `depthwise_impl`), else the model's `impl`."""
  return conv_impl or ops.default_conv_impl(impl)


register_token_mixer('attention', _attention())
register_token_mixer('identity', lambda *, name, **_: ops.Identity(name=name))
register_token_mixer('window_attention', _local(dilated=False))
register_token_mixer('grid_attention', _local(dilated=True))
register_token_mixer('window_attention_relpos', _local_relpos(dilated=False))
register_token_mixer('grid_attention_relpos', _local_relpos(dilated=True))
register_token_mixer('linear_attention', _attention(ops.LinearAttention))
register_token_mixer('pooling', lambda *, grid, prefix, name, pool_size=3, **_: ops.Pooling(
    grid, prefix, pool_size, name=name))
register_token_mixer('dwconv', lambda *, grid, prefix, impl, dtype, name, kernel_size=7, use_bias=True,
                     conv_impl=None, **_: ops.DWConv(grid, prefix, kernel_size, use_bias, _conv(conv_impl, impl),
                                                     dtype=dtype, name=name))
register_token_mixer('inception_dwconv', lambda *, grid, prefix, impl, dtype, name, square_kernel_size=3,
                     band_kernel_size=11, branch_ratio=0.125, conv_impl=None, **_: ops.InceptionDWConv(
                         grid, prefix, square_kernel_size, band_kernel_size, branch_ratio, _conv(conv_impl, impl),
                         dtype, name=name))
register_token_mixer('sepconv', lambda *, grid, prefix, impl, dtype, name, expansion_ratio=2.0, kernel_size=7,
                     conv_impl=None, **_: ops.SepConv(grid, prefix, expansion_ratio, kernel_size,
                                                      _conv(conv_impl, impl), dtype, name=name))
register_token_mixer('gated_conv', lambda *, grid, prefix, impl, dtype, name, kernel_size=7, conv_impl=None, **_:
                     ops.GatedConv(grid, prefix, kernel_size, _conv(conv_impl, impl), dtype, name=name))
register_token_mixer('hyena', _hyena(two_d=False))
register_token_mixer('hyena2d', _hyena(two_d=True))

register_channel_mixer('mlp', lambda *, hidden_dim, dtype, name, dropout=0.0, **_: layers.Mlp(
    hidden_dim, act=layers.gelu, dropout=dropout, dtype=dtype, name=name))
register_channel_mixer('mlp_tanh', lambda *, hidden_dim, dtype, name, dropout=0.0, backward='xla', **_: layers.Mlp(
    hidden_dim, act=layers.gelu_tanh, dropout=dropout, dtype=dtype, name=name, backward=backward))
# 2/3 of the MLP's hidden width: the same parameter count as the plain MLP (three matrices instead of two).
register_channel_mixer('swiglu', lambda *, hidden_dim, dtype, name, dropout=0.0, **_: ops.SwiGLU(
    int(hidden_dim * 2 / 3), dropout, dtype, name=name))
