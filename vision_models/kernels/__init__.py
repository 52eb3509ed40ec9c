"""Kernels: the attention dispatcher and its XLA reference (Pallas kernels register themselves here)."""
from vision_models.kernels.attention import IMPLS, attention, reference_attention, register_impl, resolve_impl

__all__ = ['IMPLS', 'attention', 'reference_attention', 'register_impl', 'resolve_impl']
