"""DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers"): the official model in flax.linen, NHWC.

`module.apply(variables, x, t, y, train=False)`: x `[batch, size, size, in_channels]`, t float timesteps `[batch]`,
y int labels `[batch]` (`num_classes` is the null label of classifier-free guidance) → `[batch, size, size,
2 * in_channels]` (ε, then the variance interpolation v) with `learn_sigma`, else `in_channels`.

The fixed sin-cos position embedding is the variable `constants/pos_embed` `[1, tokens, hidden]` (not trained; the
official checkpoints carry it and count it among the parameters). The token mixer and the MLP of each block are
chosen by name (`mixer`, `mixer_overrides`, `mixer_options`, `mlp`, default the official tanh-GELU `mlp_tanh`) from
the shared registry `models/mixers.py`; `parallel_blocks` pairs blocks as ViT's (see `vit.Block`).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision_models.errors import ConfigError
from vision_models.models import layers, mixers, patch_conv
from vision_models.models.registry import register

VARIANTS = {  # hidden, depth, heads (official `DiT_models`)
    's': (384, 12, 6),
    'b': (768, 12, 12),
    'l': (1024, 24, 16),
    'xl': (1152, 28, 16),
}
PATCHES = (2, 4, 8)


def sincos_2d(grid_size: int, dim: int) -> np.ndarray:
  """The official (MAE) fixed position embedding `[grid², dim]`: [sin x, cos x, sin y, cos y] with x the column,
  frequencies 10000^(-i / (dim/4)). Differs from `layers.sincos_2d` (big_vision) in the frequency spacing."""
  if dim % 4:
    raise ConfigError(f'DiT hidden_size must be divisible by 4 for the sin-cos position embedding, got {dim}')
  y, x = np.mgrid[:grid_size, :grid_size].astype(np.float64)
  omega = 1.0 / 10_000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
  x = np.outer(x.reshape(-1), omega)
  y = np.outer(y.reshape(-1), omega)
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.) -> jax.Array:
  """Sinusoidal embedding of (fractional) timesteps `[batch]` → `[batch, dim]`, ordered [cos, sin] as GLIDE/DiT."""
  half = dim // 2
  freqs = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x * (1 + scale[:, None]) + shift[:, None]


# qkv init: xavier_uniform of the fused (3·dim, dim) matrix, as the official `_basic_init`.
QKV_INIT = nn.initializers.variance_scaling(0.5, 'fan_avg', 'uniform', in_axis=0, out_axis=(1, 2))


def _zero_dense(features: int, axes: tuple[str | None, str | None], dtype: Any, name: str) -> nn.Dense:
  return layers.dense(features, axes, kernel_init=nn.initializers.zeros, dtype=dtype, name=name)


class DiTBlock(nn.Module):
  """adaLN-Zero block: x += gate · mixer(modulate(LN(x))), then the same with the MLP; the modulation starts at 0.

  Several `mixers` make a parallel block (Touvron et al. 2022): each branch has its own modulation, mixer and MLP
  (suffixed `_0`, `_1`, ...) and the branches' gated outputs add up.

  With `adaln_lora_rank` set, the modulation is `shared_mod` (computed once by DiT) plus this block's low-rank
  update up(down(silu(c))) (`adaLN_lora_down [hidden, r]`, `adaLN_lora_up [r, 6·hidden]`, zero-initialised), one per
  branch."""
  num_heads: int
  mlp_ratio: float
  grid: tuple[int, int]
  mixers: Sequence[str] = ('attention',)
  mlp: str = 'mlp_tanh'
  attn_impl: str = 'xla'
  dtype: Any = None
  mixer_options: Any = None
  qk_norm: str | None = None
  adaln_lora_rank: int | None = None

  def _modulation(self, c: jax.Array, shared_mod: jax.Array | None, suffix: str) -> jax.Array:
    dim = 6 * c.shape[-1]
    if self.adaln_lora_rank is None:
      return _zero_dense(dim, ('embed', 'mlp'), self.dtype, f'adaLN_modulation{suffix}')(nn.silu(c))
    if not self.adaln_lora_rank:
      return shared_mod
    down = layers.dense(self.adaln_lora_rank, ('embed', None), use_bias=False, dtype=self.dtype,
                        name=f'adaLN_lora_down{suffix}')(nn.silu(c))
    return shared_mod + layers.dense(dim, (None, 'mlp'), use_bias=False, kernel_init=nn.initializers.zeros,
                                     dtype=self.dtype, name=f'adaLN_lora_up{suffix}')(down)

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array, train: bool = False,
               shared_mod: jax.Array | None = None) -> jax.Array:
    dim = x.shape[-1]
    suffixes = [''] if len(self.mixers) == 1 else [f'_{b}' for b in range(len(self.mixers))]
    mods = [jnp.split(self._modulation(c, shared_mod, s), 6, -1) for s in suffixes]
    qk = {'qk_norm': self.qk_norm} if self.qk_norm else {}
    options = lambda name: mixers.select_options(  # noqa: E731
        name, {'qkv_init': QKV_INIT, **qk, **dict(self.mixer_options or {})})
    norm = lambda: nn.LayerNorm(1e-6, use_bias=False, use_scale=False, dtype=self.dtype)  # noqa: E731
    h = norm()(x)
    x = x + sum(gate[:, None] * mixers.token_mixer(
        name, dim=dim, num_heads=self.num_heads, grid=self.grid, prefix=0, impl=self.attn_impl, dtype=self.dtype,
        module_name=f'mixer{s}', **options(name))(modulate(h, shift, scale), train=train)
        for s, name, (shift, scale, gate, *_) in zip(suffixes, self.mixers, mods))
    h = norm()(x)
    x = x + sum(gate[:, None] * mixers.channel_mixer(
        self.mlp, dim=dim, hidden_dim=int(dim * self.mlp_ratio), dtype=self.dtype, module_name=f'mlp{s}',
        **options(self.mlp))(modulate(h, shift, scale), train=train)
        for s, (*_, shift, scale, gate) in zip(suffixes, mods))
    return layers.constrain(x, ('batch', 'length', 'act_embed'))


class DiT(nn.Module):
  """Class-conditional diffusion transformer (see the module docstring for the call contract)."""
  input_size: int = 32
  patch_size: int = 2
  in_channels: int = 4
  hidden_size: int = 1152
  depth: int = 28
  num_heads: int = 16
  mlp_ratio: float = 4.0
  num_classes: int = 1000
  class_dropout_prob: float = 0.1
  learn_sigma: bool = True
  mixer: str = 'attention'
  mixer_overrides: Any = None
  mixer_options: Any = None
  mlp: str = 'mlp_tanh'
  parallel_blocks: bool = False
  attn_impl: str = 'xla'
  remat: bool = False
  dtype: Any = None
  qk_norm: str | None = None  # 'layernorm' | 'rmsnorm' on each head's q and k (layers.Attention).
  # AdaLN-LoRA: None is DiT's per-block adaLN; r ≥ 0 computes one shared modulation (`adaLN_modulation`, 6d² + 6d
  # parameters) plus a rank-r update per block (7rd parameters each; 0: none).
  adaln_lora_rank: int | None = None

  @property
  def out_channels(self) -> int:
    return 2 * self.in_channels if self.learn_sigma else self.in_channels

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array, train: bool = False) -> jax.Array:
    p, d = self.patch_size, self.hidden_size
    if x.shape[1:] != (self.input_size, self.input_size, self.in_channels) or self.input_size % p:
      raise ConfigError(f'DiT built for {self.input_size}x{self.input_size}x{self.in_channels} inputs (patch {p}) '
                        f'got {x.shape[1:]}; set input_size / in_channels to the data')
    # Patch embedding initialised like a Linear on the flattened patch (xavier over p·p·C → hidden).
    x = patch_conv.Conv(d, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype, name='x_embedder',
                        kernel_init=layers.with_axes(
                            nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform', in_axis=(0, 1, 2), out_axis=3),
                            (None, None, 'conv_in', 'embed')),
                        bias_init=layers.with_axes(nn.initializers.zeros, ('embed',)))(x)
    batch, gh, gw, _ = x.shape
    pos = self.variable('constants', 'pos_embed', layers.with_axes(
        lambda *_: jnp.asarray(sincos_2d(gh, d))[None], (None, None, 'embed')), None, (1, gh * gw, d)).value
    x = x.reshape(batch, gh * gw, d) + pos.astype(x.dtype)
    x = layers.constrain(x, ('batch', 'length', 'act_embed'))

    normal = layers.with_axes(nn.initializers.normal(0.02), ('embed', 'mlp'))
    t_emb = timestep_embedding(t, 256)
    t_emb = nn.Dense(d, kernel_init=normal, dtype=self.dtype, name='t_embedder_mlp_0',
                     bias_init=layers.with_axes(nn.initializers.zeros, ('mlp',)))(t_emb)
    t_emb = nn.Dense(d, kernel_init=layers.with_axes(nn.initializers.normal(0.02), ('mlp', 'embed')),
                     bias_init=layers.with_axes(nn.initializers.zeros, ('embed',)), dtype=self.dtype,
                     name='t_embedder_mlp_2')(nn.silu(t_emb))
    has_null = self.class_dropout_prob > 0
    if train and has_null:  # Label dropout: the null class trains the unconditional model for guidance.
      drop = jax.random.uniform(self.make_rng('dropout'), y.shape) < self.class_dropout_prob
      y = jnp.where(drop, self.num_classes, y)
    y_emb = nn.Embed(self.num_classes + has_null, d, dtype=self.dtype, name='y_embedder',
                     embedding_init=layers.with_axes(nn.initializers.normal(0.02), ('classes', 'embed')))(y)
    c = t_emb + y_emb

    names = [mixers.mixer_for_layer(self.mixer, self.mixer_overrides, i, self.depth) for i in range(self.depth)]
    mixers.check_options([*names, self.mlp], self.mixer_options)
    if self.parallel_blocks and self.depth % 2:
      raise ConfigError(f'parallel_blocks pairs the blocks: DiT depth {self.depth} must be even')
    width = 2 if self.parallel_blocks else 1
    block = nn.remat(DiTBlock, static_argnums=(3,)) if self.remat else DiTBlock
    shared_mod = None
    if self.adaln_lora_rank is not None:
      shared_mod = _zero_dense(6 * d, ('embed', 'mlp'), self.dtype, 'adaLN_modulation')(nn.silu(c))
    for i in range(self.depth // width):
      x = block(self.num_heads, self.mlp_ratio, (gh, gw), tuple(names[i * width:(i + 1) * width]), self.mlp,
                self.attn_impl, self.dtype, self.mixer_options, self.qk_norm, self.adaln_lora_rank,
                name=f'blocks_{i}')(x, c, train, shared_mod)

    shift, scale = jnp.split(_zero_dense(2 * d, ('embed', 'mlp'), self.dtype, 'final_adaLN_modulation')(nn.silu(c)),
                             2, axis=-1)
    x = modulate(nn.LayerNorm(1e-6, use_bias=False, use_scale=False, dtype=self.dtype)(x), shift, scale)
    x = _zero_dense(p * p * self.out_channels, ('embed', None), self.dtype, 'final_linear')(x)
    # Unpatchify: each token holds its (p, p, C) patch, row-major like the official `unpatchify`.
    x = x.reshape(batch, gh, gw, p, p, self.out_channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, gh * p, gw * p, self.out_channels).astype(jnp.float32)


register('dit', DiT)
for _size, (_hidden, _depth, _heads) in VARIANTS.items():
  for _patch in PATCHES:
    register(f'dit_{_size}{_patch}', DiT, patch_size=_patch, hidden_size=_hidden, depth=_depth, num_heads=_heads)
