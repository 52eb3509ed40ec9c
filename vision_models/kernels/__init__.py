"""Kernels: the attention dispatcher with its XLA reference and the Pallas kernels (blockwise attention, FFT long
convolution, large-kernel depthwise convolution, LayerNorm with the residual add, the GELU MLP's backward product),
each beside a plain XLA reference."""
from vision_models.kernels.attention import (IMPLS, attention, padded_length, reference_attention, register_impl,
                                             resolve_impl)
from vision_models.kernels.depthwise_conv import depthwise_conv2d, depthwise_conv2d_reference
from vision_models.kernels.flash_attention import flash_attention
from vision_models.kernels.flash_launch import GPU_LAUNCH, Launch
from vision_models.kernels.gelu_matmul import dgelu_matmul, fits as dgelu_fits, gelu_tanh_slope
from vision_models.kernels.layer_norm import add_layer_norm, layer_norm
from vision_models.kernels.long_conv import (long_conv, long_conv2d, long_conv2d_direct, long_conv2d_fft,
                                             long_conv_direct, long_conv_fft)
from vision_models.kernels.splash import splash_attention

register_impl('pallas', lambda q, k, v, bias=None, causal=False, sm_scale=None: flash_attention(
    q, k, v, bias=bias, causal=causal, sm_scale=sm_scale))
register_impl('splash', splash_attention)

__all__ = ['GPU_LAUNCH', 'IMPLS', 'Launch', 'add_layer_norm', 'attention', 'depthwise_conv2d',
           'depthwise_conv2d_reference', 'dgelu_fits', 'dgelu_matmul', 'flash_attention', 'gelu_tanh_slope',
           'layer_norm', 'long_conv', 'long_conv2d', 'long_conv2d_direct', 'long_conv2d_fft', 'long_conv_direct',
           'long_conv_fft', 'padded_length', 'reference_attention', 'register_impl', 'resolve_impl', 'splash_attention']
