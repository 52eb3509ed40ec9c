"""The Stable Diffusion KL autoencoder (diffusers `AutoencoderKL`, e.g. `stabilityai/sd-vae-ft-mse`), flax.linen, NHWC.

Latent diffusion (DiT) trains on `SCALE * z` with `z` sampled from the encoder's diagonal Gaussian, and decodes
`samples / SCALE`. Module names mirror the diffusers state dict (`encoder.down_blocks.0.resnets.1.norm1`,
`decoder.mid_block.attentions.0`, `quant_conv`, ...) so `vision_models.convert.vae` is a rename plus transposes.

    mean, logvar = vae.apply(variables, images, method=vae.encode)     # images in [-1, 1], NHWC
    latents = SCALE * sample(key, mean, logvar)                         # [b, h/8, w/8, 4]
    images = vae.apply(variables, latents / SCALE, method=vae.decode)
"""
import json
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_models import kernels
from vision_models.errors import ConfigError
from vision_models.models import layers

SCALE = 0.18215  # Scales SD-VAE latents to about unit variance (the LDM / DiT constant).


def _conv(features: int, kernel: int = 3, stride: int = 1, padding: Any = 1, dtype: Any = None,
          name: str | None = None) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding, dtype=dtype, name=name,
                 kernel_init=layers.with_axes(nn.initializers.lecun_normal(), (None, None, 'conv_in', 'conv_out')),
                 bias_init=layers.with_axes(nn.initializers.zeros, ('conv_out',)))


def _group_norm(groups: int, dtype: Any = None, name: str | None = None) -> nn.GroupNorm:
  # Two-pass variance: the fast E[x²]-E[x]² form loses the float32 agreement with PyTorch on large activations.
  return nn.GroupNorm(num_groups=groups, epsilon=1e-6, use_fast_variance=False, dtype=dtype, name=name,
                      scale_init=layers.with_axes(nn.initializers.ones, ('conv_out',)),
                      bias_init=layers.with_axes(nn.initializers.zeros, ('conv_out',)))


class ResnetBlock(nn.Module):
  """GroupNorm → SiLU → conv3x3 → GroupNorm → SiLU → conv3x3, plus a 1x1-conv shortcut when the width changes."""
  features: int
  groups: int = 32
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = _conv(self.features, dtype=self.dtype, name='conv1')(nn.silu(_group_norm(self.groups, self.dtype, 'norm1')(x)))
    h = _conv(self.features, dtype=self.dtype, name='conv2')(nn.silu(_group_norm(self.groups, self.dtype, 'norm2')(h)))
    if x.shape[-1] != self.features:
      x = _conv(self.features, 1, padding=0, dtype=self.dtype, name='conv_shortcut')(x)
    return x + h


class SpatialAttention(nn.Module):
  """Single-head self-attention over all positions, GroupNorm in front and a residual connection (the mid block)."""
  groups: int = 32
  attn_impl: str = 'xla'
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    y = _group_norm(self.groups, self.dtype, 'group_norm')(x).reshape(b, h * w, 1, c)
    q, k, v = (layers.dense(c, ('conv_in', 'conv_out'), dtype=self.dtype, name=n)(y) for n in ('to_q', 'to_k', 'to_v'))
    y = kernels.attention(q, k, v, impl=self.attn_impl).reshape(b, h * w, c)
    y = layers.dense(c, ('conv_in', 'conv_out'), dtype=self.dtype, name='to_out_0')(y)
    return x + y.reshape(b, h, w, c)


class MidBlock(nn.Module):
  groups: int = 32
  attn_impl: str = 'xla'
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    x = ResnetBlock(c, self.groups, self.dtype, name='resnets_0')(x)
    x = SpatialAttention(self.groups, self.attn_impl, self.dtype, name='attentions_0')(x)
    return ResnetBlock(c, self.groups, self.dtype, name='resnets_1')(x)


class Downsample(nn.Module):
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # diffusers pads right/bottom only, then a VALID stride 2.
    return _conv(x.shape[-1], stride=2, padding='VALID', dtype=self.dtype, name='conv')(x)


class Upsample(nn.Module):
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # Nearest-neighbour 2x.
    return _conv(x.shape[-1], dtype=self.dtype, name='conv')(x)


class Level(nn.Module):
  """`num_layers` resnets at one resolution, then an optional down- or upsampler (Down/UpDecoderBlock2D)."""
  features: int
  num_layers: int
  groups: int
  resample: str | None = None  # 'down', 'up' or None.
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for j in range(self.num_layers):
      x = ResnetBlock(self.features, self.groups, self.dtype, name=f'resnets_{j}')(x)
    if self.resample == 'down':
      x = Downsample(self.dtype, name='downsamplers_0')(x)
    elif self.resample == 'up':
      x = Upsample(self.dtype, name='upsamplers_0')(x)
    return layers.constrain(x, ('batch', None, None, 'act_embed'))


class Encoder(nn.Module):
  """Image → `2 * latent_channels` moments at 1/2^(len(block_out_channels)-1) resolution."""
  block_out_channels: Sequence[int]
  layers_per_block: int
  latent_channels: int
  groups: int
  attn_impl: str = 'xla'
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    last = len(self.block_out_channels) - 1
    x = _conv(self.block_out_channels[0], dtype=self.dtype, name='conv_in')(x)
    for i, features in enumerate(self.block_out_channels):
      x = Level(features, self.layers_per_block, self.groups, None if i == last else 'down', self.dtype,
                name=f'down_blocks_{i}')(x)
    x = MidBlock(self.groups, self.attn_impl, self.dtype, name='mid_block')(x)
    x = nn.silu(_group_norm(self.groups, self.dtype, 'conv_norm_out')(x))
    return _conv(2 * self.latent_channels, dtype=self.dtype, name='conv_out')(x)


class Decoder(nn.Module):
  """Latent → image, mirroring the encoder with `layers_per_block + 1` resnets per level and nearest upsampling."""
  block_out_channels: Sequence[int]
  layers_per_block: int
  out_channels: int
  groups: int
  attn_impl: str = 'xla'
  dtype: Any = None

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    last = len(self.block_out_channels) - 1
    x = _conv(self.block_out_channels[-1], dtype=self.dtype, name='conv_in')(z)
    x = MidBlock(self.groups, self.attn_impl, self.dtype, name='mid_block')(x)
    for i, features in enumerate(reversed(self.block_out_channels)):
      x = Level(features, self.layers_per_block + 1, self.groups, None if i == last else 'up', self.dtype,
                name=f'up_blocks_{i}')(x)
    x = nn.silu(_group_norm(self.groups, self.dtype, 'conv_norm_out')(x))
    return _conv(self.out_channels, dtype=self.dtype, name='conv_out')(x)


class AutoencoderKL(nn.Module):
  """`encode(x) -> (mean, logvar)`, `decode(z) -> x`; `__call__` reconstructs through the posterior mean.

  The defaults are the SD VAE (sd-vae-ft-mse / -ema, 83.65M parameters); images are NHWC in [-1, 1], with sides
  divisible by 2^(len(block_out_channels)-1).
  """
  block_out_channels: Sequence[int] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  in_channels: int = 3
  out_channels: int = 3
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  attn_impl: str = 'xla'
  dtype: Any = None

  def setup(self):
    args = (tuple(self.block_out_channels), self.layers_per_block)
    self.encoder = Encoder(*args, self.latent_channels, self.norm_num_groups, self.attn_impl, self.dtype)
    self.decoder = Decoder(*args, self.out_channels, self.norm_num_groups, self.attn_impl, self.dtype)
    if self.use_quant_conv:
      self.quant_conv = _conv(2 * self.latent_channels, 1, padding=0, dtype=self.dtype)
    if self.use_post_quant_conv:
      self.post_quant_conv = _conv(self.latent_channels, 1, padding=0, dtype=self.dtype)

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Posterior moments `(mean, logvar)`, each `[b, h/f, w/f, latent_channels]`; logvar clipped to [-30, 20]."""
    moments = self.encoder(x)
    if self.use_quant_conv:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z: jax.Array) -> jax.Array:
    """Unscaled latents (divide DiT samples by `SCALE` first) → images in about [-1, 1], float32."""
    if self.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return self.decode(self.encode(x)[0])


def sample(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """A draw from the diagonal Gaussian posterior (diffusers' `latent_dist.sample()`)."""
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


def load_pretrained(path: str, **config: Any) -> tuple[AutoencoderKL, dict[str, Any]]:
  """`(module, variables)` from diffusers weights (`diffusion_pytorch_model.safetensors`, e.g. of
  stabilityai/sd-vae-ft-ema); a `config.json` beside it supplies `norm_num_groups` and the like, `config` overrides."""
  from safetensors.numpy import load_file

  from vision_models.convert.vae import from_diffusers_vae
  if not os.path.isfile(path) or not path.endswith('.safetensors'):
    raise ConfigError(f'VAE weights {path!r}: expected an existing diffusers .safetensors file (see '
                      'docs/diffusion_eval.md for where to get diffusion_pytorch_model.safetensors)')
  config_path = os.path.join(os.path.dirname(path), 'config.json')
  if os.path.exists(config_path):
    with open(config_path) as f:
      saved = json.load(f)
    keys = ('block_out_channels', 'layers_per_block', 'latent_channels', 'norm_num_groups', 'in_channels',
            'out_channels', 'use_quant_conv', 'use_post_quant_conv')
    config = {**{k: saved[k] for k in keys if k in saved}, **config}
  return from_diffusers_vae(load_file(path), **config)
