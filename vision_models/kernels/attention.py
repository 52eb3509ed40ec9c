"""The attention dispatcher every model calls, and the plain XLA reference.

Layout is `jax.nn.dot_product_attention`'s: q, k, v `[batch, seq, heads, head_dim]`, an optional additive `bias`
broadcastable to `[batch, heads, q_len, k_len]`. `impl` selects the kernel:
  xla     the reference below (materialises the logits),
  cudnn   cuDNN fused attention through `jax.nn.dot_product_attention` (GPU only),
  pallas  our blockwise kernel (`vision_models.kernels.flash_attention`),
  splash  JAX's TPU splash attention (`vision_models.kernels.splash`; with a bias it falls back to pallas),
  auto    the fastest available for the backend: cudnn on GPU for 16-bit inputs, splash on TPU, pallas on other
          GPU inputs, xla on the CPU.
"""
from typing import Callable

import jax
import jax.numpy as jnp

from vision_models.errors import ConfigError

IMPLS = ('xla', 'cudnn', 'pallas', 'auto')
_EXTRA: dict[str, Callable[..., jax.Array]] = {}


def register_impl(name: str, fn: Callable[..., jax.Array]) -> None:
  """Adds an attention implementation `fn(q, k, v, bias=None, causal=False, sm_scale=None)`."""
  _EXTRA[name] = fn


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None = None, *,
                        causal: bool = False, sm_scale: float | None = None) -> jax.Array:
  """softmax(q kᵀ · scale + bias) v, with the softmax in float32."""
  scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if causal:
    q_len, k_len = logits.shape[-2:]
    mask = jnp.tril(jnp.ones((q_len, k_len), bool), k_len - q_len)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  # Normalised after the product with v, on [b, q, h, d] rather than [b, h, q, k], as flash attention does: a pass
  # over the weights less each way. ViT-S/16's CPU train step holds 15% fewer temporaries (1023 → 866 MB) and takes
  # 1% less CPU time; its wall time is within the noise (benchmarks/RESULTS.md).
  weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
  out = jnp.einsum('bhqk,bkhd->bqhd', weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return (out / weights.sum(-1).transpose(0, 2, 1)[..., None]).astype(v.dtype)


_CUDNN_MULTIPLE = 64  # sequence lengths cuDNN's fused training kernels take on every version JAX supports


def _cudnn(q, k, v, bias=None, *, causal=False, sm_scale=None):
  if bias is not None:  # cuDNN wants the bias at full rank [b, h, q, k].
    bias = jnp.broadcast_to(bias, (q.shape[0], q.shape[2], q.shape[1], k.shape[1])).astype(q.dtype)
  q_len, k_len = q.shape[1], k.shape[1]
  lengths = {}
  if q_len % _CUDNN_MULTIPLE or k_len % _CUDNN_MULTIPLE:
    # Other lengths (ViT's 197) are refused by some versions, and only once the backward is traced (late, under
    # remat): pad both sequences and give cuDNN the true lengths, so the padded keys are masked out.
    pad = lambda x, n: jnp.pad(x, [(0, 0), (0, -n % _CUDNN_MULTIPLE)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
    q, k, v = pad(q, q_len), pad(k, k_len), pad(v, k_len)
    if bias is not None:
      bias = jnp.pad(bias, [(0, 0), (0, 0), (0, -q_len % _CUDNN_MULTIPLE), (0, -k_len % _CUDNN_MULTIPLE)])
    lengths = {'query_seq_lengths': jnp.full((q.shape[0],), q_len, jnp.int32),
               'key_value_seq_lengths': jnp.full((q.shape[0],), k_len, jnp.int32)}
  out = jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=causal, scale=sm_scale, implementation='cudnn',
                                     **lengths)
  return out[:, :q_len]


def resolve_impl(impl: str, dtype=jnp.float32) -> str:
  """The concrete implementation `auto` stands for on this backend (cuDNN needs a GPU and 16-bit inputs)."""
  if impl not in IMPLS and impl not in _EXTRA:
    raise ConfigError(f'unknown attention impl {impl!r}; choose one of {", ".join(IMPLS + tuple(_EXTRA))}')
  if impl != 'auto':
    return impl
  backend = jax.default_backend()
  if backend == 'gpu' and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return 'cudnn'
  if backend == 'tpu' and 'splash' in _EXTRA:
    return 'splash'
  if backend in ('gpu', 'tpu') and 'pallas' in _EXTRA:
    return 'pallas'
  return 'xla'


def attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None = None, *, impl: str = 'xla',
              causal: bool = False, sm_scale: float | None = None) -> jax.Array:
  """Dispatches to the attention implementation named by `impl` (see the module docstring)."""
  impl = resolve_impl(impl, q.dtype)
  if impl == 'xla':
    return reference_attention(q, k, v, bias, causal=causal, sm_scale=sm_scale)
  if impl == 'cudnn':
    return _cudnn(q, k, v, bias, causal=causal, sm_scale=sm_scale)
  if impl not in _EXTRA:
    raise ConfigError(f'attention impl {impl!r} is not available in this build')
  return _EXTRA[impl](q, k, v, bias=bias, causal=causal, sm_scale=sm_scale)
