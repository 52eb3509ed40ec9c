"""JAX's TPU splash attention behind the dispatcher's signature: what `impl='auto'` uses on TPU.

Splash wants `[heads, seq, head_dim]` per example, sequences divisible by its 128 blocks, no softmax scale and no
additive bias. So: q is pre-scaled, sequences are zero-padded to 128 and padded keys are cut off with segment ids
(padded queries keep a real key, so no row is empty), and calls with a bias (or causal cross-attention of unequal
lengths) go to our Pallas kernel instead.
"""
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from vision_models.kernels.flash_attention import flash_attention

_BLOCK = 128  # splash's default block sizes; both sequences must be multiples of it


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None = None, causal: bool = False,
                     sm_scale: float | None = None, *, interpret: bool | None = None) -> jax.Array:
  """Attention through `make_splash_mha_single_device`, q/k/v `[batch, seq, heads, head_dim]` like `flash_attention`.

  `interpret=None` interprets the kernel when the default backend is the CPU.
  """
  q_len, k_len = q.shape[1], k.shape[1]
  if bias is not None or (causal and q_len != k_len):
    return flash_attention(q, k, v, bias=bias, causal=causal, sm_scale=sm_scale, interpret=interpret)
  interpret = jax.default_backend() == 'cpu' if interpret is None else interpret
  heads, head_dim = q.shape[2:]
  qp, kp = -(-q_len // _BLOCK) * _BLOCK, -(-k_len // _BLOCK) * _BLOCK
  mask = splash.CausalMask((qp, kp)) if causal else splash.FullMask((qp, kp))
  kernel = splash.make_splash_mha_single_device(splash.MultiHeadMask([mask] * heads), interpret=interpret)
  scale = head_dim ** -0.5 if sm_scale is None else sm_scale

  def layout(x, padded):  # [B, S, H, D] -> [B, H, padded, D]
    return jnp.pad(jnp.swapaxes(x, 1, 2), ((0, 0), (0, 0), (0, padded - x.shape[1]), (0, 0)))

  segments = splash.SegmentIds(q=jnp.zeros(qp, jnp.int32), kv=(jnp.arange(kp) >= k_len).astype(jnp.int32))
  out = jax.vmap(kernel, in_axes=(0, 0, 0, None))(layout(q * jnp.asarray(scale, q.dtype), qp), layout(k, kp),
                                                 layout(v, kp), segments if kp != k_len else None)
  return jnp.swapaxes(out[:, :, :q_len], 1, 2)
