"""The attention dispatcher every model calls, and the plain XLA reference.

Layout is `jax.nn.dot_product_attention`'s: q, k, v `[batch, seq, heads, head_dim]`, an optional additive `bias`
broadcastable to `[batch, heads, q_len, k_len]`, and an optional `key_length`: keys from that index on are padding and
get no weight (a model whose tokens are padded to a length the kernel takes, `padded_length`). `impl` selects the
kernel:
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
                        causal: bool = False, sm_scale: float | None = None,
                        key_length: int | None = None) -> jax.Array:
  """softmax(q kᵀ · scale + bias) v, with the softmax in float32 (keys from `key_length` on masked out)."""
  scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if causal:
    q_len, k_len = logits.shape[-2:]
    mask = jnp.tril(jnp.ones((q_len, k_len), bool), k_len - q_len)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  if key_length is not None:
    logits = jnp.where(jnp.arange(logits.shape[-1]) < key_length, logits, jnp.finfo(jnp.float32).min)
  # Normalised after the product with v, on [b, q, h, d] rather than [b, h, q, k], as flash attention does: a pass
  # over the weights less each way. ViT-S/16's CPU train step holds 15% fewer temporaries (1023 → 866 MB) and takes
  # 1% less CPU time; its wall time is within the noise (benchmarks/RESULTS.md).
  weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
  out = jnp.einsum('bhqk,bkhd->bqhd', weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return (out / weights.sum(-1).transpose(0, 2, 1)[..., None]).astype(v.dtype)


# jax's cuDNN dispatch takes even lengths for training: it passes a placeholder bias when there is none, and biased
# training kernels need even lengths (jax/_src/cudnn/fused_attention_stablehlo.py, `check_is_flash_attention`).
# ViT pads its whole trunk to this multiple (`padded_length`): were it ever larger (64 once), it should pad in `_cudnn`
# alone, or every block would compute the padding too.
_CUDNN_MULTIPLE = 2


def padded_length(length: int, impl: str, dtype=jnp.float32) -> int:
  """The sequence length `impl` runs `length` tokens at: a model padding its tokens to it (with `key_length`) saves
  the kernel padding and cutting them on every call. cuDNN: the next multiple of `_CUDNN_MULTIPLE`; others: `length`."""
  return length + (-length % _CUDNN_MULTIPLE if resolve_impl(impl, dtype) == 'cudnn' else 0)


def _cudnn(q, k, v, bias=None, *, causal=False, sm_scale=None, key_length=None):
  q_len, k_len = q.shape[1], k.shape[1]
  if causal and q_len != k_len:  # jax aligns its causal mask top-left; ours (the reference's) is aligned bottom-right
    bias = _masked(bias, jnp.tril(jnp.ones((q_len, k_len), bool), k_len - q_len), q.dtype)
    causal = False
  if bias is not None:  # cuDNN wants the bias at full rank [b, h, q, k].
    bias = jnp.broadcast_to(bias, (q.shape[0], q.shape[2], q_len, k_len)).astype(q.dtype)
  if q_len % _CUDNN_MULTIPLE or k_len % _CUDNN_MULTIPLE:  # pad, and give cuDNN the true lengths to mask
    pad = lambda x, n: jnp.pad(x, [(0, 0), (0, -n % _CUDNN_MULTIPLE)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
    q, k, v = pad(q, q_len), pad(k, k_len), pad(v, k_len)
    if bias is not None:
      bias = jnp.pad(bias, [(0, 0), (0, 0), (0, -q_len % _CUDNN_MULTIPLE), (0, -k_len % _CUDNN_MULTIPLE)])
  lengths = {}
  if key_length is not None or k.shape[1] != k_len:
    lengths = {'query_seq_lengths': jnp.full((q.shape[0],), q_len, jnp.int32),
               'key_value_seq_lengths': jnp.full((q.shape[0],), key_length or k_len, jnp.int32)}
  out = jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=causal, scale=sm_scale, implementation='cudnn',
                                     **lengths)
  return out[:, :q_len]


def _masked(bias: jax.Array | None, keep: jax.Array, dtype=jnp.float32) -> jax.Array:
  """`bias` (or none) plus a mask giving the logits where `keep [q, k]` is False no weight, for kernels without it."""
  # A large finite value rather than -inf: a block of masked keys seen first must not make exp(-inf - -inf).
  mask = jnp.where(keep, 0.0, -0.7 * float(jnp.finfo(jnp.float32).max))[None, None].astype(dtype)
  return mask if bias is None else bias.astype(dtype) + mask


def resolve_impl(impl: str, dtype=jnp.float32) -> str:
  """The concrete implementation `auto` stands for on this backend (cuDNN needs a GPU and 16-bit inputs)."""
  if impl not in IMPLS and impl not in _EXTRA:
    names = IMPLS + tuple(name for name in _EXTRA if name not in IMPLS)
    raise ConfigError(f'unknown attention impl {impl!r}; choose one of {", ".join(names)}')
  backend = jax.default_backend()
  if impl == 'splash' and backend == 'gpu':
    raise ConfigError("attention impl 'splash' is JAX's TPU kernel; on GPUs use 'pallas', 'cudnn' or 'auto'")
  if impl != 'auto':
    return impl
  if backend == 'gpu' and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return 'cudnn'
  if backend == 'tpu' and 'splash' in _EXTRA:
    return 'splash'
  if backend in ('gpu', 'tpu') and 'pallas' in _EXTRA:
    return 'pallas'
  return 'xla'


def attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None = None, *, impl: str = 'xla',
              causal: bool = False, sm_scale: float | None = None, key_length: int | None = None) -> jax.Array:
  """Dispatches to the attention implementation named by `impl` (see the module docstring)."""
  impl = resolve_impl(impl, q.dtype)
  if key_length is not None and not 0 < key_length <= k.shape[1]:
    raise ValueError(f'key_length {key_length} must be in [1, {k.shape[1]}], the number of keys')
  if impl == 'xla':
    return reference_attention(q, k, v, bias, causal=causal, sm_scale=sm_scale, key_length=key_length)
  if impl == 'cudnn':
    return _cudnn(q, k, v, bias, causal=causal, sm_scale=sm_scale, key_length=key_length)
  if impl not in _EXTRA:
    raise ConfigError(f'attention impl {impl!r} is not available in this build')
  if key_length is not None:
    bias = _masked(bias, jnp.broadcast_to(jnp.arange(k.shape[1]) < key_length, (q.shape[1], k.shape[1])))
  return _EXTRA[impl](q, k, v, bias=bias, causal=causal, sm_scale=sm_scale)
