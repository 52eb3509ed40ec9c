"""The flash kernels compiled by Triton on a real GPU (skipped elsewhere; the CPU suite checks them in interpret mode):
values and gradients against the float32 XLA reference with the default GPU launches, including the bias layouts
MaxViT and relative-position models use, causal masks, lengths no tile divides and float32 rows that force the
launches' shared-memory fallback. Lengths up to `SHORT_SEQ` run seq-major with `GPU_LAUNCH_SHORT`, longer ones
head-major. Passed on an H100 on 2026-11-23 (bf16 errors ~2.5e-3, float32 with TF32 ~3e-4) and on 2026-11-24 with
every case seq-major (jax 0.11.2, so with padded sequences). The in-place path jax 0.12 takes (blocks past the end
masked by the lowering) has run only in interpret mode, which fills those blocks with NaN. The cuDNN dispatch of
`kernels.attention` (its sequence padding included, and tokens padded by the model past `key_length`) is checked
against the same reference in bfloat16."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_models import kernels
from vision_models.kernels import flash_attention, reference_attention

pytestmark = pytest.mark.skipif(jax.default_backend() != 'gpu', reason='the Triton and cuDNN kernels need a GPU')

CASES = [  # batch, q_len, k_len, heads, head_dim, causal, bias shape, dtype
    (2, 197, 197, 4, 64, False, (1, 4, 197, 197), 'bfloat16'),
    (2, 197, 197, 2, 64, True, (1, 2, 197, 197), 'float32'),
    (2, 50, 50, 2, 128, False, (2, 1, 50, 50), 'float32'),
    (1, 40, 72, 2, 72, True, (72,), 'bfloat16'),
    (2, 1000, 1000, 4, 64, True, None, 'bfloat16'),
    (1, 49, 49, 8, 32, False, (1, 8, 49, 49), 'bfloat16'),
    (1, 1000, 1000, 2, 64, False, None, 'float32'),
    (1, 300, 300, 2, 128, True, (1, 2, 300, 300), 'float32'),
]


def assert_matches_reference(attend, case):
  """Output and q, k, v (and bias) gradients of `attend(q, k, v, bias, causal)` against the float32 reference."""
  batch, q_len, k_len, heads, head_dim, causal, bias_shape, dtype = case
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32), dtype)  # noqa: E731
  q, do = normal(batch, q_len, heads, head_dim), normal(batch, q_len, heads, head_dim)
  k, v = normal(batch, k_len, heads, head_dim), normal(batch, k_len, heads, head_dim)
  args = [q, k, v] + ([] if bias_shape is None else [normal(*bias_shape)])

  def grads(attend, *args):
    out, vjp = jax.vjp(lambda q, k, v, *bias: attend(q, k, v, *bias), *args)
    return (out,) + vjp(do.astype(out.dtype))

  ours = jax.jit(lambda *a: grads(lambda q, k, v, *b: attend(q, k, v, b[0] if b else None, causal), *a))(*args)
  expected = jax.jit(lambda *a: grads(lambda q, k, v, *b: reference_attention(
      q, k, v, b[0] if b else None, causal=causal), *a))(*[x.astype(jnp.float32) for x in args])
  tolerance = 1e-2 if dtype == 'bfloat16' else 2e-3  # bf16 inputs; float32 dots run as TF32 on the matrix units
  for got, want in zip(ours, expected):
    error = jnp.linalg.norm(got.astype(jnp.float32) - want) / jnp.linalg.norm(want)
    assert np.isfinite(float(error)) and float(error) < tolerance


@pytest.mark.parametrize('case', CASES, ids=str)
def test_triton_kernels_match_reference(case):
  assert_matches_reference(lambda q, k, v, bias, causal: flash_attention(q, k, v, bias=bias, causal=causal), case)


@pytest.mark.parametrize('case', [c for c in CASES if c[-1] == 'bfloat16'], ids=str)
def test_cudnn_path_matches_reference(case):
  # kernels.attention's cuDNN dispatch: lengths padded to `_CUDNN_MULTIPLE` with the true lengths passed on.
  assert_matches_reference(
      lambda q, k, v, bias, causal: kernels.attention(q, k, v, bias, impl='cudnn', causal=causal), case)


@pytest.mark.parametrize('case', [c for c in CASES if c[-1] == 'bfloat16' and c[1] == c[2] and not c[5]], ids=str)
def test_cudnn_with_tokens_padded_by_the_model(case):
  # As ViT runs its trunk for cuDNN: tokens padded to `kernels.padded_length`, the padding masked by `key_length`.
  def attend(q, k, v, bias, causal):
    length = q.shape[1]
    pad = lambda x, axes: jnp.pad(x, [(0, -length % 2 if a in axes else 0) for a in range(x.ndim)])  # noqa: E731
    if bias is not None:
      bias = pad(jnp.broadcast_to(bias, (*bias.shape[:2], length, length)), (2, 3))
    out = kernels.attention(pad(q, (1,)), pad(k, (1,)), pad(v, (1,)), bias, impl='cudnn', causal=causal,
                            key_length=length)
    return out[:, :length]
  assert_matches_reference(attend, case)
