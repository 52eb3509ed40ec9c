"""Kernels: the attention dispatcher and its XLA reference (Pallas kernels register themselves here)."""
from vision_models.kernels.attention import IMPLS, attention, reference_attention, register_impl, resolve_impl
from vision_models.kernels.depthwise_conv import depthwise_conv2d, depthwise_conv2d_reference
from vision_models.kernels.long_conv import (long_conv, long_conv2d, long_conv2d_direct, long_conv2d_fft,
                                             long_conv_direct, long_conv_fft)

__all__ = ['IMPLS', 'attention', 'reference_attention', 'register_impl', 'resolve_impl']
__all__ += ['depthwise_conv2d', 'depthwise_conv2d_reference', 'long_conv', 'long_conv2d', 'long_conv2d_direct',
            'long_conv2d_fft', 'long_conv_direct', 'long_conv_fft']
