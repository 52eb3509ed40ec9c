"""Kernels: the attention dispatcher and its XLA reference (Pallas kernels register themselves here)."""
from vision_models.kernels.attention import IMPLS, attention, reference_attention, register_impl, resolve_impl
from vision_models.kernels.flash_attention import flash_attention
from vision_models.kernels.splash import splash_attention

register_impl('pallas', lambda q, k, v, bias=None, causal=False, sm_scale=None: flash_attention(
    q, k, v, bias=bias, causal=causal, sm_scale=sm_scale))
register_impl('splash', splash_attention)

__all__ = ['IMPLS', 'attention', 'flash_attention', 'reference_attention', 'register_impl', 'resolve_impl']
