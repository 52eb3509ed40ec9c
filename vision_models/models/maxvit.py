"""MaxViT (Tu et al. 2022), the TF-ported layout timm calls `maxvit_*_tf_*`, in flax.linen, NHWC.

Stem (3×3 s2 conv → BN+GELU → 3×3 conv), then stages of MaxViT blocks: MBConv (pre-norm BN, 1×1 expand ×4, 3×3
depthwise with the stage's stride, squeeze-excitation, 1×1 project) → block attention (w×w windows) + FFN → grid
attention (a w×w grid dilated over the whole map) + FFN, with w = image_size / 32. Attention has 32-wide heads and a
learned 2-D relative position bias table (heads, 2w−1, 2w−1). Head: average pool → LN → pre-logits dense + tanh →
dense. Both attentions are token mixers of `models/mixers.py` (`window_attention_relpos`, `grid_attention_relpos`):
`mixer_overrides` puts any other registered mixer in any block.

TF conventions the weights need: BatchNorm eps 1e-3, LayerNorm eps 1e-5, tanh GELU, TF 'SAME' padding (asymmetric for
the stride-2 convs). Module names follow timm's state dict (`stem_conv1`, `stages_I_blocks_J/{conv,attn_block,
attn_grid}`, `norm`, `pre_logits`, `head`). BatchNorm statistics live in the `batch_stats` collection; under a
data-parallel jit the batch statistics are those of the global batch (synchronised BatchNorm).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_models.errors import ConfigError
from vision_models.models import layers, mixers, patch_conv
from vision_models.models.registry import register

VARIANTS = {  # stem width, widths, depths (timm maxxvit.py `maxvit_*_tf`; google-research/maxvit hp/vision.py)
    't': (64, (64, 128, 256, 512), (2, 2, 5, 2)),
    's': (64, (96, 192, 384, 768), (2, 2, 5, 2)),
    'b': (64, (96, 192, 384, 768), (2, 6, 14, 2)),
    'l': (128, (128, 256, 512, 1024), (2, 6, 14, 2)),
    'xl': (192, (192, 384, 768, 1536), (2, 6, 14, 2)),
}
BN_EPS = 1e-3  # TF's default, carried by the ported weights.
BN_MOMENTUM = 0.99  # The official recipe's (TF decay 0.99).
LN_EPS = 1e-5


def conv(features: int, kernel: int = 1, stride: int = 1, use_bias: bool = True, dtype: Any = None,
         name: str | None = None) -> nn.Conv:
  """Conv with TF 'SAME' padding and EfficientNet's init normal(0, sqrt(2 / fan_out)) (timm's `_init_conv`)."""
  init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
  return patch_conv.Conv(features, (kernel, kernel), strides=(stride, stride), padding='SAME', use_bias=use_bias,
                         dtype=dtype, name=name,
                         kernel_init=layers.with_axes(init, (None, None, 'conv_in', 'conv_out')),
                         bias_init=layers.with_axes(nn.initializers.zeros, ('conv_out',)))


def batch_norm(train: bool, dtype: Any = None, name: str | None = None) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, dtype=dtype, name=name,
                      scale_init=layers.with_axes(nn.initializers.ones, ('conv_out',)),
                      bias_init=layers.with_axes(nn.initializers.zeros, ('conv_out',)))


def avg_pool2(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


class MBConv(nn.Module):
  """Pre-norm inverted bottleneck: BN → 1×1 (×4) → BN+GELU → 3×3 depthwise (stride) → BN+GELU → SE → 1×1.
  The shortcut is a 2×2 average pool (+ 1×1 conv when the width changes) in a strided block."""
  features: int
  stride: int = 1
  drop_path: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    mid = self.features * 4
    shortcut = x
    if self.stride == 2:
      shortcut = avg_pool2(shortcut)
      if x.shape[-1] != self.features:
        shortcut = conv(self.features, dtype=self.dtype, name='shortcut_expand')(shortcut)
    x = batch_norm(train, self.dtype, 'pre_norm')(x)
    x = conv(mid, use_bias=False, dtype=self.dtype, name='conv1_1x1')(x)
    x = layers.gelu_tanh(batch_norm(train, self.dtype, 'norm1')(x))
    # A depthwise kernel (3, 3, 1, C) has per-group fan-out 3·3, which is its fan-in in Flax's reckoning.
    x = layers.DepthwiseConv((3, 3), (self.stride, self.stride), 'SAME', use_bias=False, dtype=self.dtype,
                             kernel_init=nn.initializers.variance_scaling(2.0, 'fan_in', 'normal'),
                             name='conv2_kxk')(x)
    x = layers.gelu_tanh(batch_norm(train, self.dtype, 'norm2')(x))
    # Squeeze-excitation with int(0.25 × output width) hidden units, SiLU inside, sigmoid gate.
    se = x.mean(axis=(1, 2), keepdims=True)
    se = nn.silu(conv(int(0.25 * self.features), dtype=self.dtype, name='se_fc1')(se))
    x = x * nn.sigmoid(conv(mid, dtype=self.dtype, name='se_fc2')(se))
    x = conv(self.features, dtype=self.dtype, name='conv3_1x1')(x)
    return layers.DropPath(self.drop_path)(x, train) + shortcut


SLOTS = ('window_attention_relpos', 'grid_attention_relpos')  # The default mixers: block, then grid attention.


class PartitionAttention(nn.Module):
  """Pre-norm token mixer, then FFN. The default mixer (`window_attention_relpos` / `grid_attention_relpos` of
  `models/mixers.py`: attention within w×w windows or a w×w dilated grid, with a relative position bias) shares this
  module's scope, so its `relative_position_bias_table` and `attn` sit here as in timm; any other is `mixer`."""
  window: int
  grid: bool
  head_dim: int = 32
  drop_path: float = 0.0
  attn_impl: str = 'xla'
  dtype: Any = None
  mixer: str | None = None
  mixer_options: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    b, h, w, dim = x.shape
    default = SLOTS[self.grid]
    name = self.mixer or default
    options = mixers.select_options(name, {'window': self.window, **dict(self.mixer_options or {})})
    mixer = mixers.token_mixer(name, dim=dim, num_heads=max(1, dim // self.head_dim), grid=(h, w),
                               impl=self.attn_impl, dtype=self.dtype,
                               module_name=None if name == default else 'mixer', **options)
    if name == default:
      nn.share_scope(self, mixer)

    y = layers.layer_norm(LN_EPS, dtype=self.dtype, name='norm1')(x)
    y = mixer(y.reshape(b, h * w, dim), train=train).reshape(x.shape)
    x = x + layers.DropPath(self.drop_path)(y, train)
    y = layers.layer_norm(LN_EPS, dtype=self.dtype, name='norm2')(x)
    y = layers.Mlp(4 * dim, act=layers.gelu_tanh, bias_init=nn.initializers.normal(1e-6), dtype=self.dtype,
                   name='mlp')(y)
    x = x + layers.DropPath(self.drop_path)(y, train)
    return layers.constrain(x, ('batch', None, None, 'act_embed'))


class MaxViTBlock(nn.Module):
  """MBConv → block attention → grid attention (their token mixers `mixers`), one stochastic-depth rate for all."""
  features: int
  stride: int
  window: int
  head_dim: int = 32
  drop_path: float = 0.0
  attn_impl: str = 'xla'
  dtype: Any = None
  mixers: tuple[str, str] = SLOTS
  mixer_options: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = MBConv(self.features, self.stride, self.drop_path, self.dtype, name='conv')(x, train)
    for name, grid, mixer in (('attn_block', False, self.mixers[0]), ('attn_grid', True, self.mixers[1])):
      x = PartitionAttention(self.window, grid, self.head_dim, self.drop_path, self.attn_impl, self.dtype, mixer,
                             self.mixer_options, name=name)(x, train)
    return x


class MaxViT(nn.Module):
  """MaxViT classifier. `image_size` fixes the window and grid size, `image_size // partition_ratio` (7 at 224,
  12 at 384, 16 at 512), and with it the shape of the relative position tables. `num_classes=0` returns the
  pre-logits features (after the tanh), as timm does. `remat` recomputes each block in the backward pass.

  Token mixers (`models/mixers.py`): each block has two, the block and the grid attention's. `mixer` is one name
  for both or a (block, grid) pair, default `('window_attention_relpos', 'grid_attention_relpos')`;
  `mixer_overrides` maps global block ranges to a name or a pair (`{'0:2': 'dwconv', '-1': ('attention',
  'identity')}`); `mixer_options` their options (the model gives `window`, image_size // partition_ratio)."""
  num_classes: int = 1000
  image_size: int = 224
  stem_width: int = 64
  dims: Sequence[int] = (64, 128, 256, 512)
  depths: Sequence[int] = (2, 2, 5, 2)
  head_dim: int = 32
  partition_ratio: int = 32
  drop_path: float = 0.0
  attn_impl: str = 'xla'
  remat: bool = False
  dtype: Any = None
  mixer: str | Sequence[str] = SLOTS
  mixer_overrides: Any = None
  mixer_options: Any = None

  @property
  def window(self) -> int:
    if self.image_size % self.partition_ratio:
      raise ConfigError(f'MaxViT image_size={self.image_size} is not divisible by {self.partition_ratio}: the '
                        f'attention window and grid are image_size // {self.partition_ratio}; use a multiple of '
                        f'{self.partition_ratio} (224, 384, 512)')
    return self.image_size // self.partition_ratio

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    if len(self.dims) != len(self.depths):
      raise ConfigError(f'MaxViT dims {tuple(self.dims)} and depths {tuple(self.depths)} differ in length')
    window, stride = self.window, 2 ** (len(self.dims) + 1)
    size = images.shape[1:3]
    if any(s % stride or (s // stride) % window for s in size):
      raise ConfigError(f'MaxViT (image_size={self.image_size}, window {window}) cannot take {size[0]}×{size[1]} '
                        f'images: every stage map must split into {window}×{window} windows; feed '
                        f'{self.image_size}×{self.image_size} images or set image_size')
    x = conv(self.stem_width, 3, 2, dtype=self.dtype, name='stem_conv1')(images)
    x = layers.gelu_tanh(batch_norm(train, self.dtype, 'stem_norm1')(x))
    x = conv(self.stem_width, 3, dtype=self.dtype, name='stem_conv2')(x)

    total, index = sum(self.depths), 0
    names = [mixers.block_mixers(mixers.mixer_for_layer(self.mixer, self.mixer_overrides, i, total), 2,
                                 f'MaxViT block {i} mixer') for i in range(total)]
    mixers.check_options({n for pair in names for n in pair}, self.mixer_options)
    block = nn.remat(MaxViTBlock, static_argnums=(2,)) if self.remat else MaxViTBlock
    for i, (dim, depth) in enumerate(zip(self.dims, self.depths)):
      for j in range(depth):
        rate = self.drop_path * index / max(total - 1, 1)  # Linear over all blocks, as timm.
        x = block(dim, 2 if j == 0 else 1, window, self.head_dim, rate, self.attn_impl, self.dtype, names[index],
                  self.mixer_options, name=f'stages_{i}_blocks_{j}')(x, train)
        index += 1

    x = layers.layer_norm(LN_EPS, dtype=self.dtype, name='norm')(x.mean(axis=(1, 2)))
    x = jnp.tanh(layers.dense(self.dims[-1], ('embed', None), dtype=self.dtype, name='pre_logits')(x))
    if not self.num_classes:
      return x
    # torch's default Linear init, which timm's head keeps: uniform(±1/sqrt(fan_in)).
    head_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
    return layers.dense(self.num_classes, (None, 'classes'), kernel_init=head_init, dtype=self.dtype,
                        name='head')(x).astype(jnp.float32)


register('maxvit', MaxViT)
for _size, (_stem, _dims, _depths) in VARIANTS.items():
  register(f'maxvit_{_size}', MaxViT, stem_width=_stem, dims=_dims, depths=_depths)
