"""UniRepLKNet (Ding et al. 2024, "UniRepLKNet: A Universal Perception Large-Kernel ConvNet ..."), flax.linen, NHWC.

Stem: 3×3 stride-2 conv → LN → GELU → 3×3 stride-2 conv → LN; stages 2-4 start with a 3×3 stride-2 conv → LN (LN eps
1e-6, over channels). Block: depthwise conv → BN → squeeze-and-excitation (¼ width, ReLU, sigmoid) → Dense 4d → GELU
→ GRN → Dense d (no bias) → BN → layer scale → drop path, plus the residual. Head: global average pool → LN → Dense.

Blocks with kernel ≥ 7 use the Dilated Reparam Block: the large depthwise conv + BN, plus parallel dilated small
depthwise convs, each + BN, summed. `reparameterize(module, variables)` gives the deploy form, the paper's structural
re-parameterisation: every dilated branch and BN folded into one large-kernel depthwise conv with a bias, and the GRN
bias, output BN and layer scale into the second Dense. Module names follow the official state dict. The block's
depthwise conv is the token mixer `dilated_reparam` of `models/mixers.py`: `mixer_overrides` puts any other in any
block.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision_models.errors import ConfigError
from vision_models.models import layers, mixer_ops, mixers
from vision_models.models.registry import register

BN_EPS = 1e-5
LN_EPS = 1e-6
# Parallel dilated branches (kernel, dilation) per large kernel size (the official defaults).
BRANCHES = {
    17: ((5, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
    15: ((5, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    13: ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    11: ((5, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
    9: ((5, 1), (5, 2), (3, 3), (3, 4)),
    7: ((5, 1), (3, 2), (3, 3)),
}
DEPTHS = {'afp': (2, 2, 6, 2), 'n': (2, 2, 8, 2), 't': (3, 3, 18, 3), 'sblxl': (3, 3, 27, 3)}
KERNEL_SIZES = {  # Per block, by depths (the official defaults): 3×3 in stage 1, 13×13 elsewhere, some 3×3 in stage 3.
    DEPTHS['afp']: ((3,) * 2, (13,) * 2, (13,) * 6, (13,) * 2),
    DEPTHS['n']: ((3,) * 2, (13,) * 2, (13,) * 8, (13,) * 2),
    DEPTHS['t']: ((3,) * 3, (13,) * 3, (13, 3) * 9, (13,) * 3),
    DEPTHS['sblxl']: ((3,) * 3, (13,) * 3, (13, 3, 3) * 9, (13,) * 3),
}
VARIANTS = {  # name: (depths, dims)
    'a': (DEPTHS['afp'], (40, 80, 160, 320)),
    'f': (DEPTHS['afp'], (48, 96, 192, 384)),
    'p': (DEPTHS['afp'], (64, 128, 256, 512)),
    'n': (DEPTHS['n'], (80, 160, 320, 640)),
    't': (DEPTHS['t'], (80, 160, 320, 640)),
    's': (DEPTHS['sblxl'], (96, 192, 384, 768)),
    'b': (DEPTHS['sblxl'], (128, 256, 512, 1024)),
    'l': (DEPTHS['sblxl'], (192, 384, 768, 1536)),
    'xl': (DEPTHS['sblxl'], (256, 512, 1024, 2048)),
}

init = layers.trunc_normal(0.02)


def batch_norm(train: bool, dtype: Any = None, name: str | None = None) -> nn.BatchNorm:
  """PyTorch's BatchNorm2d defaults (eps 1e-5, momentum 0.1 ≙ Flax 0.9)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPS, dtype=dtype, name=name,
                      scale_init=layers.with_axes(nn.initializers.ones, ('embed',)),
                      bias_init=layers.with_axes(nn.initializers.zeros, ('embed',)))


def dilated_depthwise(x: jax.Array, kernel: jax.Array, rate: int) -> jax.Array:
  """'Same'-padded depthwise conv of NHWC `x` with a `(k, k, 1, C)` kernel dilated by `rate`."""
  return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), 'SAME', rhs_dilation=(rate, rate),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=x.shape[-1])


class DilatedReparamBlock(nn.Module):
  """The `dilated_reparam` token mixer, on the tokens' h×w grid (prefix tokens get the grid mean, see
  `mixer_ops.on_grid`). Kernel ≥ 7: large depthwise conv + BN, plus dilated small depthwise convs + BN (training);
  one biased conv (deploy). Smaller kernels: a plain depthwise conv (`kernel`, and `bias` in deploy form)."""
  kernel_size: int
  deploy: bool = False
  impl: str = 'xla'
  dtype: Any = None
  grid: tuple[int, int] | None = None
  prefix: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    k, impl, dtype = self.kernel_size, mixer_ops.conv_impl(self.impl), self.dtype or x.dtype
    dim = x.shape[-1]

    def mix(g):
      if k not in BRANCHES:
        kernel = self.param('kernel', layers.with_axes(init, (None, None, None, 'embed')), (k, k, 1, dim))
        out = layers.depthwise_conv(g.astype(dtype), kernel.astype(dtype), impl=impl)
        if self.deploy:
          out = out + self.param('bias', layers.with_axes(nn.initializers.zeros, ('embed',)), (dim,)).astype(dtype)
        return out
      out = layers.DepthwiseConv((k, k), use_bias=self.deploy, kernel_init=init, impl=impl, axis_name='embed',
                                 dtype=self.dtype, name='lk_origin')(g)
      if self.deploy:
        return out
      out = batch_norm(train, self.dtype, 'origin_bn')(out)
      for bk, rate in BRANCHES[k]:
        w = self.param(f'dil_conv_k{bk}_{rate}', layers.with_axes(init, (None, None, None, 'embed')), (bk, bk, 1, dim))
        out = out + batch_norm(train, self.dtype, f'dil_bn_k{bk}_{rate}')(dilated_depthwise(g.astype(dtype), w, rate))
      return out

    return mixer_ops.on_grid(x, self.grid, self.prefix, mix)


mixers.register_token_mixer('dilated_reparam', lambda *, grid, prefix, impl, dtype, name, kernel_size=13,
                            deploy=False, conv_impl=None, **_: DilatedReparamBlock(
                                kernel_size, deploy, conv_impl or mixer_ops.default_conv_impl(impl), dtype, grid,
                                prefix, name=name))


class SEBlock(nn.Module):
  """Squeeze-and-excitation: global average → Dense d/4 → ReLU → Dense d → sigmoid, scaling the channels."""
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    s = x.mean(axis=(1, 2), keepdims=True)
    s = nn.relu(layers.dense(dim // 4, ('embed', 'mlp'), kernel_init=init, dtype=self.dtype, name='down')(s))
    s = layers.dense(dim, ('mlp', 'embed'), kernel_init=init, dtype=self.dtype, name='up')(s)
    return x * nn.sigmoid(s)


class GRN(nn.Module):
  """Global response normalisation: (γ·N(x) + 1)·x (+ β), N(x) = ‖x‖₂,HW / mean_C ‖x‖₂,HW."""
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    gamma = self.param('gamma', layers.with_axes(nn.initializers.zeros, ('mlp',)), (dim,))
    gx = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=(1, 2), keepdims=True))  # f32: a whole-map sum.
    nx = (gx / (gx.mean(axis=-1, keepdims=True) + 1e-6)).astype(x.dtype)
    y = (gamma.astype(x.dtype) * nx + 1) * x
    if self.use_bias:
      y = y + self.param('beta', layers.with_axes(nn.initializers.zeros, ('mlp',)), (dim,)).astype(x.dtype)
    return y


class Block(nn.Module):
  """dwconv → BN → SE → Dense 4d → GELU → GRN → Dense d → BN → layer scale → drop path, plus the residual.
  Deploy form: biased dwconv → SE → Dense 4d → GELU → GRN without β → biased Dense d.

  The dwconv is the token mixer `mixer` of `models/mixers.py` (`dilated_reparam`, under `dwconv`; any other under
  `mixer`, with `kernel_size` and `conv_impl` given and dim // head_dim attention heads). Only a `dilated_reparam`
  block has a deploy form: with another mixer the block stays in training form (`reparameterize` leaves it)."""
  kernel_size: int
  layer_scale: float | None = 1e-6
  drop_path: float = 0.0
  deploy: bool = False
  depthwise_impl: str = 'auto'
  dtype: Any = None
  mixer: str = 'dilated_reparam'
  mixer_options: Any = None
  head_dim: int = 32
  attn_impl: str = 'xla'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    (b, h, w, dim), reparam = x.shape, self.mixer == 'dilated_reparam'
    deploy = self.deploy and reparam
    # `deploy` is the block's form, not an option: its parameters must match the rest of the block.
    options = {'kernel_size': self.kernel_size, 'conv_impl': self.depthwise_impl, **dict(self.mixer_options or {}),
               'deploy': deploy}
    mixer = mixers.token_mixer(self.mixer, dim=dim, num_heads=max(1, dim // self.head_dim), grid=(h, w),
                               impl=self.attn_impl, dtype=self.dtype, module_name='dwconv' if reparam else 'mixer',
                               **mixers.select_options(self.mixer, options))
    y = mixer(x.reshape(b, h * w, dim), train=train).reshape(x.shape)
    if not deploy:
      y = batch_norm(train, self.dtype, 'norm')(y)
    y = SEBlock(self.dtype, name='se')(y)
    y = layers.dense(4 * dim, ('embed', 'mlp'), kernel_init=init, dtype=self.dtype, name='pwconv1')(y)
    y = GRN(not deploy, name='grn')(layers.gelu(y))
    y = layers.dense(dim, ('mlp', 'embed'), use_bias=deploy, kernel_init=init, dtype=self.dtype, name='pwconv2')(y)
    if not deploy:
      y = batch_norm(train, self.dtype, 'pwconv2_bn')(y)
      if self.layer_scale:
        y = layers.LayerScale(self.layer_scale, name='ls')(y)
    x = x + layers.DropPath(self.drop_path)(y, train)
    return layers.constrain(x, ('batch', None, None, 'act_embed'))


class UniRepLKNet(nn.Module):
  """UniRepLKNet classifier; `num_classes=0` returns the pooled, normalised features. `kernel_sizes` (per block per
  stage) defaults to the official table for `depths`. `deploy=True` is the re-parameterised form (see
  `reparameterize`). `depthwise_impl` picks the depthwise conv (`layers.depthwise_conv`: `pallas` for the large
  kernels on accelerators); the dilated branches are XLA convolutions.

  Token mixers (`models/mixers.py`): `mixer` (default `dilated_reparam`: the Dilated Reparam Block, a plain
  depthwise conv for kernels < 7) for every block, `mixer_overrides` maps global block ranges to other mixers
  (`{'-3:': 'attention'}`), `mixer_options` their options (each block gives its `kernel_size` and `conv_impl`).
  `head_dim` sets the heads of attention mixers (dim // head_dim), `attn_impl` their kernel."""
  num_classes: int = 1000
  depths: Sequence[int] = (3, 3, 18, 3)
  dims: Sequence[int] = (80, 160, 320, 640)
  kernel_sizes: Sequence[Sequence[int]] | None = None
  layer_scale: float | None = 1e-6
  drop_path: float = 0.0
  deploy: bool = False
  depthwise_impl: str = 'auto'
  remat: bool = False
  dtype: Any = None
  mixer: str = 'dilated_reparam'
  mixer_overrides: Any = None
  mixer_options: Any = None
  head_dim: int = 32
  attn_impl: str = 'xla'

  def block_kernel_sizes(self) -> tuple[tuple[int, ...], ...]:
    sizes = self.kernel_sizes if self.kernel_sizes is not None else KERNEL_SIZES.get(tuple(self.depths))
    if sizes is None:
      raise ConfigError(f'UniRepLKNet has no default kernel sizes for depths {tuple(self.depths)}; set '
                        'config.model.kernel_sizes (one tuple per stage, one size per block)')
    if [len(s) for s in sizes] != list(self.depths) or any(k not in (3, 5, *BRANCHES) for s in sizes for k in s):
      raise ConfigError(f'UniRepLKNet kernel_sizes {sizes} must give one size in 3, 5, 7, 9, ..., 17 per block of '
                        f'depths {tuple(self.depths)}')
    return tuple(tuple(s) for s in sizes)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    if len(self.depths) != 4 or len(self.dims) != 4:
      raise ConfigError(f'UniRepLKNet needs 4 depths and 4 dims, got {tuple(self.depths)}, {tuple(self.dims)}')
    sizes = self.block_kernel_sizes()
    total = sum(self.depths)
    names = [mixers.mixer_for_layer(self.mixer, self.mixer_overrides, i, total) for i in range(total)]
    mixers.check_options(names, self.mixer_options)

    def down(x, dim, name):
      x = nn.Conv(dim, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype, name=f'{name}_conv',
                  kernel_init=layers.with_axes(init, (None, None, 'conv_in', 'embed')),
                  bias_init=layers.with_axes(nn.initializers.zeros, ('embed',)))(x)
      return layers.layer_norm(LN_EPS, dtype=self.dtype, name=f'{name}_norm')(x)

    x = layers.gelu(down(images, self.dims[0] // 2, 'stem_0'))
    block = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
    index = 0
    for i, dim in enumerate(self.dims):
      x = down(x, dim, 'stem_1' if i == 0 else f'downsample_{i}')
      for j, k in enumerate(sizes[i]):
        rate = self.drop_path * index / max(total - 1, 1)  # torch.linspace(0, drop_path, total), as the official.
        x = block(k, self.layer_scale, rate, self.deploy, self.depthwise_impl, self.dtype, names[index],
                  self.mixer_options, self.head_dim, self.attn_impl, name=f'stages_{i}_{j}')(x, train)
        index += 1

    x = layers.layer_norm(LN_EPS, dtype=self.dtype, name='norm')(x.mean(axis=(1, 2)))
    if not self.num_classes:
      return x
    return layers.dense(self.num_classes, ('embed', 'classes'), kernel_init=init, dtype=self.dtype,
                        name='head')(x).astype(jnp.float32)


def _fold_bn(kernel: np.ndarray, bias: np.ndarray | float, bn: dict, stats: dict) -> tuple[np.ndarray, np.ndarray]:
  """(kernel, bias) of a conv/Dense followed by BN in eval mode, as one biased conv/Dense (output channels last)."""
  scale = bn['scale'] / np.sqrt(stats['var'] + BN_EPS)
  return kernel * scale, bn['bias'] + (bias - stats['mean']) * scale


def _undilate(kernel: np.ndarray, rate: int, size: int) -> np.ndarray:
  """A `(k, k, 1, C)` kernel dilated by `rate` as the equivalent dense `(size, size, 1, C)` kernel, centred."""
  k = kernel.shape[0]
  span = rate * (k - 1) + 1
  dense = np.zeros((span, span, *kernel.shape[2:]), kernel.dtype)
  dense[::rate, ::rate] = kernel
  pad = size // 2 - span // 2
  return np.pad(dense, ((pad, pad), (pad, pad), (0, 0), (0, 0)))


def reparameterize(module: UniRepLKNet, variables: dict) -> tuple[UniRepLKNet, dict]:
  """The deploy form `(module.clone(deploy=True), variables)`: in each block the dilated branches, their BNs and the
  block's BN merge into one large-kernel depthwise conv with a bias; the GRN bias, the output BN and the layer scale
  merge into the second Dense. Equal to the training form in eval mode up to float rounding. Blocks with another
  token mixer than `dilated_reparam` (no `dwconv`) stay as they are, BN statistics included."""
  if module.deploy:
    raise ConfigError('reparameterize: the module is already in deploy form')
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), nn.unbox(variables['params']))
  stats = jax.tree.map(lambda a: np.asarray(a, np.float64), nn.unbox(variables['batch_stats']))
  out = {k: v for k, v in params.items() if not k.startswith('stages_')}
  kept = {k: v for k, v in nn.unbox(variables['batch_stats']).items() if k.startswith('stages_') and k in params
          and 'dwconv' not in params[k]}
  for name, p in params.items():
    if not name.startswith('stages_') or 'dwconv' not in p:
      out[name] = p
      continue
    s, block = stats[name], dict(p)
    if 'lk_origin' in p['dwconv']:  # A Dilated Reparam Block.
      d, ds = p['dwconv'], s['dwconv']
      kernel, bias = _fold_bn(d['lk_origin']['kernel'], 0.0, d['origin_bn'], ds['origin_bn'])
      size = kernel.shape[0]
      for key in (k for k in d if k.startswith('dil_conv_')):
        bn = key.replace('dil_conv_', 'dil_bn_')
        rate = int(key.rsplit('_', 1)[1])
        branch_kernel, branch_bias = _fold_bn(d[key], 0.0, d[bn], ds[bn])
        kernel, bias = kernel + _undilate(branch_kernel, rate, size), bias + branch_bias
    else:
      kernel, bias = p['dwconv']['kernel'], 0.0
    kernel, bias = _fold_bn(kernel, bias, p['norm'], s['norm'])
    dwconv = {'kernel': kernel, 'bias': bias}
    block['dwconv'] = {'lk_origin': dwconv} if 'lk_origin' in p['dwconv'] else dwconv
    del block['norm']
    w = p['pwconv2']['kernel']
    w, b = _fold_bn(w, p['grn']['beta'] @ w, p['pwconv2_bn'], s['pwconv2_bn'])
    gamma = p['ls']['gamma'] if 'ls' in p else 1.0
    block['pwconv2'] = {'kernel': w * gamma, 'bias': b * gamma}
    block['grn'] = {'gamma': p['grn']['gamma']}
    for key in ('pwconv2_bn', 'ls'):
      block.pop(key, None)
    out[name] = block
  dtype = jax.tree.leaves(nn.unbox(variables['params']))[0].dtype
  deployed = {'params': jax.tree.map(lambda a: jnp.asarray(a, dtype), out)}
  if kept:
    deployed['batch_stats'] = kept
  return module.clone(deploy=True), deployed

register('unireplknet', UniRepLKNet)
for _size, (_depths, _dims) in VARIANTS.items():
  register(f'unireplknet_{_size}', UniRepLKNet, depths=_depths, dims=_dims)
