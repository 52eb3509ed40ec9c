"""Vision Transformer (ViT, AugReg, DeiT, DeiT III), the timm layout in flax.linen, NHWC.

Module names follow timm's state dict (`patch_embed`, `cls_token`, `pos_embed`, `blocks_N.{norm1,attn,norm2,mlp}`,
`norm`, `fc_norm`, `head`) so weight conversion stays a rename plus transposes.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_models import kernels
from vision_models.errors import ConfigError
from vision_models.models import layers, mixers, patch_conv
from vision_models.models.registry import register

VARIANTS = {  # width, depth, heads, mlp_dim (vit_jax/configs/models.py)
    'ti': (192, 12, 3, 768),
    's': (384, 12, 6, 1536),
    'b': (768, 12, 12, 3072),
    'l': (1024, 24, 16, 4096),
    'h': (1280, 32, 16, 5120),
}
PATCHES = (32, 16, 14, 8)


class Block(nn.Module):
  """Pre-norm transformer block: x + DropPath(LS(Mixer(LN(x)))), then the same with the MLP.

  The token mixer comes from `models/mixers.py` by name (attention under `attn`, any other under `mixer`). Several
  `mixers` make a parallel block (Touvron et al. 2022): x + Σ_b mixer_b(LN_b(x)), then x + Σ_b mlp_b(LN_b(x)), each
  branch with its own norms, mixer, MLP and layer scales, suffixed `_0`, `_1`, ...
  `key_length`: the tokens from this index on are padding, which the attention mixers mask out. `norm_impl`:
  `layers.layer_norm`'s; with 'pallas' a residual add and the norm after it are one kernel. So that the MLP's residual
  add meets the next block's `norm1`, a block called with `pending` (the previous block's MLP output) adds it first,
  and with `defer_residual` returns `(x, its MLP output)` for the next block to add.
  """
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  drop_path: float = 0.0
  layer_scale: float | None = None
  attn_impl: str = 'xla'
  dtype: Any = None
  mixers: Sequence[str] = ('attention',)
  mlp: str = 'mlp'
  mixer_options: Any = None
  grid: tuple[int, int] | None = None
  prefix: int = 0
  key_length: int | None = None
  norm_impl: str = 'xla'
  defer_residual: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               pending: jax.Array | None = None) -> jax.Array | tuple[jax.Array, jax.Array]:
    dim = x.shape[-1]
    scale = (lambda name: layers.LayerScale(self.layer_scale, name=name)) if self.layer_scale else (
        lambda name: (lambda y: y))
    suffixes = [''] if len(self.mixers) == 1 else [f'_{b}' for b in range(len(self.mixers))]
    padding = {'key_length': self.key_length} if self.key_length else {}
    options = lambda name: mixers.select_options(  # noqa: E731
        name, {'dropout': self.dropout, **dict(self.mixer_options or {}), **padding})

    def add_and_norm(x, update, norm_name):  # x + update, and each branch's norm of it (the first fused with the add)
      norms = [layers.layer_norm(dtype=self.dtype, name=f'{norm_name}{s}', impl=self.norm_impl) for s in suffixes]
      x, y = layers.add_layer_norm(x, update, norms[0])
      return x, [y] + [norm(x) for norm in norms[1:]]

    x, normed = add_and_norm(x, pending, 'norm1')
    branches = []
    for s, name, y in zip(suffixes, self.mixers, normed):
      y = mixers.token_mixer(name, dim=dim, num_heads=self.num_heads, grid=self.grid, prefix=self.prefix,
                             impl=self.attn_impl, dtype=self.dtype,
                             module_name=('attn' if name == 'attention' else 'mixer') + s, **options(name))(
          y, train=train)
      branches.append(layers.DropPath(self.drop_path)(scale(f'ls1{s}')(y), train))
    x, normed = add_and_norm(x, sum(branches), 'norm2')
    branches = []
    for s, y in zip(suffixes, normed):
      y = mixers.channel_mixer(self.mlp, dim=dim, hidden_dim=self.mlp_dim, dtype=self.dtype, module_name=f'mlp{s}',
                               **options(self.mlp))(y, train=train)
      branches.append(layers.DropPath(self.drop_path)(scale(f'ls2{s}')(y), train))
    constrain = lambda t: layers.constrain(t, ('batch', 'length', 'act_embed'))  # noqa: E731
    if self.defer_residual:
      return constrain(x), constrain(sum(branches))
    return constrain(x + sum(branches))


class ViT(nn.Module):
  """ViT classifier. `pool='token'` uses a class token (timm default), `'gap'` averages the patch tokens, then
  normalises (`fc_norm`, timm) or normalises every token first (`fc_norm=False`, vision_transformer / big_vision).

  `posemb='learn'` adds a learned embedding (normal std 0.02), `'sincos2d'` a fixed one (not a parameter).
  `no_embed_class` adds the learned embedding to the patches only, before the class token joins (DeiT III,
  big_vision). `distilled` adds DeiT's distillation token and `head_dist`; the output averages both heads (timm).
  `num_classes=0` returns the pooled features. `remat` recomputes each block in the backward pass
  (True, or a `jax.checkpoint_policies` name).
  `mixer` names every block's token mixer (`models/mixers.py`: 'attention', 'hyena2d', 'pooling', ...),
  `mixer_overrides` other mixers for block ranges (`{'6:12': 'hyena2d'}`), `mixer_options` their options; `mlp` names
  the channel mixer. `norm_impl` is `layers.layer_norm`'s ('auto': the Pallas kernels, residual add fused, on one
  GPU; `layers.kernel_default`). `parallel_blocks` pairs blocks 2i and 2i+1 into parallel block i (Touvron et al.
  2022; same parameters, `mixers.parallel_from_sequential` maps a sequential checkpoint); overrides index the sequential
  blocks.
  """
  num_classes: int = 1000
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  pool: str = 'token'
  posemb: str = 'learn'
  dropout: float = 0.0
  drop_path: float = 0.0
  layer_scale: float | None = None
  no_embed_class: bool = False
  distilled: bool = False
  fc_norm: bool = True
  attn_impl: str = 'xla'
  remat: bool | str = False
  dtype: Any = None
  mixer: str = 'attention'
  mixer_overrides: Any = None
  mixer_options: Any = None
  mlp: str = 'mlp'
  norm_impl: str = 'auto'
  parallel_blocks: bool = False

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    if self.pool not in ('token', 'gap'):
      raise ValueError(f"ViT pool must be 'token' or 'gap', got {self.pool!r}")
    p = self.patch_size
    x = patch_conv.Conv(self.width, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype, name='patch_embed',
                        kernel_init=layers.with_axes(nn.initializers.lecun_normal(), (None, None, 'conv_in', 'embed')),
                        bias_init=layers.with_axes(nn.initializers.zeros, ('embed',)))(images)
    batch, h, w, _ = x.shape
    x = x.reshape(batch, h * w, self.width)

    if self.distilled and self.pool != 'token':
      raise ValueError("a distilled ViT needs pool='token'")

    def token(name, init):
      value = self.param(name, layers.with_axes(init, (None, None, 'embed')), (1, 1, self.width))
      return jnp.broadcast_to(value, (batch, 1, self.width)).astype(x.dtype)

    tokens = [token('cls_token', nn.initializers.zeros)] if self.pool == 'token' else []
    if self.distilled:
      tokens.append(token('dist_token', nn.initializers.normal(0.02)))
    if self.posemb == 'learn':
      rows = h * w + (0 if self.no_embed_class else len(tokens))
      pos = self.param('pos_embed', layers.with_axes(nn.initializers.normal(0.02), (None, None, 'embed')),
                       (1, rows, self.width)).astype(x.dtype)
    elif self.posemb == 'sincos2d':
      pos = layers.sincos_2d(h, w, self.width)[None].astype(x.dtype)
    else:
      raise ValueError(f"ViT posemb must be 'learn' or 'sincos2d', got {self.posemb!r}")
    if self.no_embed_class or self.posemb == 'sincos2d':  # Tokens get no position (DeiT III, big_vision, MoCo v3).
      x = jnp.concatenate([*tokens, x + pos], axis=1)
    else:
      x = jnp.concatenate([*tokens, x], axis=1) + pos
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    norm_impl = layers.kernel_default(self.norm_impl)
    norm = lambda name: layers.layer_norm(dtype=self.dtype, name=name, impl=norm_impl)  # noqa: E731

    names = [mixers.mixer_for_layer(self.mixer, self.mixer_overrides, i, self.depth) for i in range(self.depth)]
    mixers.check_options([*names, self.mlp], self.mixer_options)
    # Tokens padded to the length the attention kernel runs at (cuDNN: 197 → 198) and masked as keys: otherwise every
    # block pads q, k, v and cuts the output back (ViT-B/16 on an H100: 3.7 GB of memory traffic per step).
    length = padded = x.shape[1]
    if set(names) == {'attention'}:
      padded = kernels.padded_length(length, self.attn_impl, self.dtype or x.dtype)
    if padded > length:
      x = jnp.pad(x, ((0, 0), (0, padded - length), (0, 0)))
    x = layers.constrain(x, ('batch', 'length', 'act_embed'))
    if self.parallel_blocks and self.depth % 2:
      raise ConfigError(f'parallel_blocks pairs the blocks: depth {self.depth} must be even')
    width = 2 if self.parallel_blocks else 1
    count = self.depth // width
    block = layers.remat(Block, self.remat, static_argnums=(2,))
    pending = None  # each block's MLP output, added by the next block's (or the final) norm in one pass
    for i in range(count):
      rate = self.drop_path * i / max(count - 1, 1)  # Linear stochastic-depth decay, as timm and DeiT.
      x, pending = block(self.num_heads, self.mlp_dim, self.dropout, rate, self.layer_scale, self.attn_impl,
                         self.dtype, tuple(names[i * width:(i + 1) * width]), self.mlp, self.mixer_options, (h, w),
                         len(tokens), length if padded > length else None, norm_impl, True, name=f'blocks_{i}')(
          x, train, pending)

    head = lambda name: layers.dense(self.num_classes, ('embed', 'classes'),  # noqa: E731
                                     kernel_init=nn.initializers.zeros, dtype=self.dtype, name=name)
    # The last MLP output is added in the final norm's pass; the padding goes.
    final = lambda name: layers.add_layer_norm(x, pending, norm(name))[1][:, :length]  # noqa: E731
    if self.distilled:  # The two heads' average: timm's eval output, and its training output without distillation.
      x = final('norm')
      if not self.num_classes:
        return (x[:, 0] + x[:, 1]) / 2
      return ((head('head')(x[:, 0]) + head('head_dist')(x[:, 1])) / 2).astype(jnp.float32)
    if self.pool == 'token':
      x = final('norm')[:, 0]
    elif self.fc_norm:  # timm's avg pool normalises after pooling (`fc_norm`).
      x = norm('fc_norm')((x if pending is None else x + pending)[:, :length].mean(axis=1))
    else:
      x = final('norm').mean(axis=1)
    if not self.num_classes:
      return x
    return head('head')(x).astype(jnp.float32)


register('vit', ViT)
for _size, (_width, _depth, _heads, _mlp) in VARIANTS.items():
  _arch = dict(width=_width, depth=_depth, num_heads=_heads, mlp_dim=_mlp)
  for _patch in PATCHES:
    register(f'vit_{_size}{_patch}', ViT, patch_size=_patch, **_arch)
  if _size in ('ti', 's', 'b'):  # DeiT with a distillation token (facebookresearch/deit).
    register(f'deit_{_size}16_distilled', ViT, patch_size=16, distilled=True, **_arch)
  if _size != 'ti':  # DeiT III: layer scale 1e-6, no position embedding on the class token.
    _patch = 14 if _size == 'h' else 16
    register(f'deit3_{_size}{_patch}', ViT, patch_size=_patch, layer_scale=1e-6, no_embed_class=True, **_arch)
# Hyena ViT (Poli et al. 2023; Hyena N-D, Zimerman & Wolf 2023): the 2-D Hyena operator (order 2, implicit
# (2h−1)×(2w−1) filters) in place of attention, patch 16, global average pooling instead of a class token.
for _size in ('ti', 's', 'b'):
  _width, _depth, _heads, _mlp = VARIANTS[_size]
  register(f'hyena_vit_{_size}16', ViT, patch_size=16, width=_width, depth=_depth, num_heads=_heads, mlp_dim=_mlp,
           mixer='hyena2d', pool='gap')
