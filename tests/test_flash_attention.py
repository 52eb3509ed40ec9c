"""Pallas flash attention (interpret mode on the CPU) against the XLA reference: values and gradients of q, k, v and
bias, awkward lengths, jit / vmap / shard_map, a ViT with both impls, and real TPU / Triton lowering via jax.export."""
import functools
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from vision_models import kernels, models
from vision_models.errors import ConfigError
from vision_models.kernels import flash_attention, reference_attention
from vision_models.kernels.splash import splash_attention

flash_attention_module = importlib.import_module('vision_models.kernels.flash_attention')  # the function shadows it

# Interpreted kernels are big while-loops; XLA's backend optimisations only slow their compilation down here.
fast_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def inputs(batch, q_len, k_len, heads, head_dim, bias_shape=None, dtype=jnp.float32, seed=0):
  """q, k, v, bias, and an output cotangent do (numpy's generator: jax.random would compile per shape)."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32), dtype)
  q, do = normal(batch, q_len, heads, head_dim), normal(batch, q_len, heads, head_dim)
  k, v = normal(batch, k_len, heads, head_dim), normal(batch, k_len, heads, head_dim)
  return q, k, v, None if bias_shape is None else normal(*bias_shape), do


def value_and_grads(fn, q, k, v, bias, do):
  """(output, dq, dk, dv, dbias) of fn(q, k, v, bias) for the cotangent `do`."""
  out, vjp = jax.vjp(fn, q, k, v, bias)
  return (out,) + vjp(do)


@functools.partial(fast_jit, static_argnums=0)
def reference(causal, q, k, v, bias, do):
  return value_and_grads(lambda q, k, v, b: reference_attention(q, k, v, b, causal=causal), q, k, v, bias, do)


@pytest.fixture(params=['head_major', 'seq_major', 'seq_major_padded'])
def seq_major(request, monkeypatch) -> bool:
  """The kernels' layouts: head-major (TPU), seq-major in place (GPU, jax >= 0.12: blocks past the end masked by the
  lowering) and seq-major with padded sequences (GPU, jax 0.11). Interpret mode fills blocks past the end with NaN,
  so the in-place kernels must zero those rows, or NaN reaches every output."""
  if request.param == 'seq_major_padded':
    monkeypatch.setattr(flash_attention_module, 'SEQ_MAJOR_IN_PLACE', False)
  return request.param != 'head_major'


def assert_close(actual, expected, tol):
  for a, e in zip(actual, expected):
    if e is None:
      assert a is None
    else:
      assert a.shape == e.shape and a.dtype == e.dtype
      np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(e, np.float32), atol=tol, rtol=tol)


CASES = {  # batch, q_len, k_len, heads, head_dim, causal, bias shape, block_q, block_k
    'vit197_one_head_bias': (1, 197, 197, 1, 64, False, (1, 1, 197, 197), 64, 64),
    'causal197_bias_1hqk': (2, 197, 197, 2, 64, True, (1, 2, 197, 197), 32, 64),
    'dim128_bias_b1qk': (2, 50, 50, 2, 128, False, (2, 1, 50, 50), 16, 32),
    'cross_causal_dim72_bias_k': (1, 40, 72, 2, 72, True, (72,), 16, 32),
}


@pytest.mark.parametrize('causal', [False, True], ids=['full', 'causal'])
def test_reference_matches_jax_softmax_attention(causal):
  """The reference normalises after the product with v; jax.nn.dot_product_attention normalises the weights first."""
  q, k, v, bias, do = inputs(2, 50, 50, 3, 32, (2, 3, 50, 50))
  bias = bias * 3  # logits spread enough for the max subtraction to matter
  ours = reference(causal, q, k, v, bias, do)
  theirs = value_and_grads(lambda q, k, v, b: jax.nn.dot_product_attention(q, k, v, b, is_causal=causal,
                                                                          implementation='xla'), q, k, v, bias, do)
  assert_close(ours, theirs, 2e-5)


@pytest.mark.parametrize('case', CASES)
def test_float32_matches_reference(case, seq_major):
  batch, q_len, k_len, heads, head_dim, causal, bias_shape, block_q, block_k = CASES[case]
  args = inputs(batch, q_len, k_len, heads, head_dim, bias_shape)
  ours = fast_jit(lambda *a: value_and_grads(lambda q, k, v, b: flash_attention(
      q, k, v, bias=b, causal=causal, block_q=block_q, block_k=block_k, seq_major=seq_major), *a))(*args)
  assert_close(ours, reference(causal, *args), 1e-5)


def test_bfloat16_matches_reference():
  args = inputs(2, 197, 197, 2, 64, (1, 2, 197, 197), dtype=jnp.bfloat16)
  ours = fast_jit(lambda *a: value_and_grads(lambda q, k, v, b: flash_attention(
      q, k, v, bias=b, causal=True, block_q=64, block_k=64), *a))(*args)
  assert ours[0].dtype == jnp.bfloat16
  # The reference in float32 on the same bf16 inputs: our float32 accumulation should land within bf16 rounding.
  f32 = [x.astype(jnp.float32) for x in args]
  expected = reference(True, *f32)
  assert_close([x.astype(jnp.float32) for x in ours], expected, 2e-2)


def test_jit_and_vmap_one_block(seq_major):
  # 17 tokens: one padded block; vmap over a leading axis of 3 adds a grid dimension to all three kernels.
  args = inputs(6, 17, 17, 2, 32, (6, 2, 17, 17))
  split = lambda x: x.reshape(3, 2, *x.shape[1:])
  fn = lambda q, k, v, b: flash_attention(q, k, v, bias=b, sm_scale=0.3, seq_major=seq_major)
  ours = fast_jit(jax.vmap(lambda *a: value_and_grads(fn, *a)))(*map(split, args))
  expected = fast_jit(lambda *a: value_and_grads(lambda q, k, v, b: reference_attention(q, k, v, b, sm_scale=0.3),
                                                 *a))(*args)
  assert_close([x.reshape(e.shape) for x, e in zip(ours, expected)], expected, 1e-5)


def test_shard_map_over_batch_and_heads():
  mesh = jax.make_mesh((2, 4), ('batch', 'heads'), axis_types=(AxisType.Auto,) * 2)
  args = inputs(4, 40, 40, 8, 32, (1, 8, 40, 40))
  qkv = P('batch', None, 'heads', None)

  def loss(fn, q, k, v, bias, do):
    return jnp.sum(fn(q, k, v, bias) * do)

  def sharded(q, k, v, bias, do):
    local = jax.shard_map(lambda *a: flash_attention(*a[:3], bias=a[3], causal=True, block_q=16, block_k=16),
                          mesh=mesh, in_specs=(qkv, qkv, qkv, P(None, 'heads')), out_specs=qkv)
    return loss(local, q, k, v, bias, do)

  ours = fast_jit(jax.value_and_grad(sharded, argnums=(0, 1, 2, 3)))(*args)
  expected = reference(True, *args)
  np.testing.assert_allclose(ours[0], jnp.sum(expected[0] * args[4]), rtol=1e-5)
  assert_close(ours[1], expected[1:], 1e-5)


def test_vit_same_logits_with_pallas():  # through the dispatcher: layers.Attention calls kernels.attention
  config = dict(num_classes=5, patch_size=4, width=32, depth=1, num_heads=2, mlp_dim=64)
  images = jax.random.normal(jax.random.key(1), (2, 20, 20, 3))  # 25 patches + class token = 26 tokens
  xla = models.create('vit', attn_impl='xla', **config)
  variables = nn.unbox(fast_jit(xla.init)(jax.random.key(0), images))
  variables['params']['head']['kernel'] = jax.random.normal(jax.random.key(2), (32, 5))  # the head starts at zero
  expected = fast_jit(xla.apply)(variables, images)
  logits = fast_jit(models.create('vit', attn_impl='pallas', **config).apply)(variables, images)
  np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)


def test_maxvit_same_logits_with_pallas():  # block and grid attention with the relative position bias
  config = dict(num_classes=5, image_size=64, stem_width=8, dims=(8, 16, 16, 16), depths=(1, 1, 1, 1), head_dim=8)
  images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  xla = models.create('maxvit', attn_impl='xla', **config)
  variables = nn.unbox(fast_jit(xla.init)(jax.random.key(0), images))
  expected = fast_jit(xla.apply)(variables, images)
  logits = fast_jit(models.create('maxvit', attn_impl='pallas', **config).apply)(variables, images)
  np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)


def test_dit_same_output_with_pallas():
  config = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=4)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  t, y = jnp.array([3.0, 500.0]), jnp.array([0, 2])
  xla = models.create('dit', attn_impl='xla', **config)
  variables = nn.unbox(fast_jit(xla.init)(jax.random.key(0), x, t, y))
  # adaLN-Zero starts every block at the identity: random weights make the attention count.
  variables['params'] = jax.tree.map(lambda p: jax.random.normal(jax.random.key(3), p.shape) * 0.1,
                                     variables['params'])
  expected = fast_jit(xla.apply)(variables, x, t, y)
  out = fast_jit(models.create('dit', attn_impl='pallas', **config).apply)(variables, x, t, y)
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


def test_dispatcher():
  assert kernels.resolve_impl('pallas') == 'pallas' and kernels.resolve_impl('splash') == 'splash'
  assert kernels.resolve_impl('auto') == 'xla'  # on the CPU


def test_splash_matches_reference():
  args = inputs(1, 130, 130, 2, 32)  # padded to 256: two splash blocks, padded keys masked by segment ids
  ours = fast_jit(lambda *a: value_and_grads(lambda q, k, v, b: splash_attention(q, k, v, causal=True), *a))(*args)
  assert_close(ours, reference(True, *args), 1e-5)


def test_per_kernel_launches_match_reference(seq_major):
  # Different tiles for the forward, dK/dV and dQ kernels (the GPU default), causal, lengths no tile divides.
  args = inputs(1, 50, 70, 2, 32)
  launch = {'fwd': kernels.Launch(32, 16), 'dkv': kernels.Launch(16, 32, 8, 3), 'dq': kernels.Launch(32, 32)}
  ours = fast_jit(lambda *a: value_and_grads(lambda q, k, v, b: flash_attention(
      q, k, v, causal=True, launch=launch, seq_major=seq_major), *a))(*args)
  assert_close(ours, reference(True, *args), 1e-5)
  with pytest.raises(ConfigError, match='unknown kernels'):
    flash_attention(*args[:3], launch={'bwd': kernels.Launch()})


def test_bad_input_raises():
  q = jnp.zeros((1, 8, 2, 16))
  with pytest.raises(ConfigError, match='power of two'):
    flash_attention(q, q, q, block_q=24)
  with pytest.raises(ConfigError, match='broadcastable'):
    flash_attention(q, q, q, bias=jnp.zeros((3, 8, 8)))
  with pytest.raises(ConfigError, match='matching'):
    flash_attention(q, q[..., :8], q)


# ------------------------------------------------------------------------------------------ real lowering on the CPU


def export(fn, platform, *args):
  """jax.export for a platform this machine lacks: runs the Pallas -> Mosaic TPU / Triton lowering for real."""
  if platform == 'tpu':
    return jax.export.export(jax.jit(fn), platforms=['tpu'])(*args)
  gpu = jax.sharding.AbstractDevice('NVIDIA H100 80GB HBM3', 132, 'gpu')
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=gpu)):
    return jax.export.export(jax.jit(fn), platforms=['cuda'], disabled_checks=[
        jax.export.DisabledSafetyCheck.custom_call('__gpu$xla.gpu.triton')])(*args)


KERNEL_CALL = {'tpu': 'tpu_custom_call', 'cuda': '__gpu$xla.gpu.triton'}


@pytest.mark.parametrize('platform,seq_major', [('tpu', False), ('cuda', False), ('cuda', True)])
@pytest.mark.parametrize('dtype,head_dim', [(jnp.bfloat16, 64), (jnp.float32, 72)])
def test_lowers_for_real(platform, seq_major, dtype, head_dim):
  # ViT-B/16's 197 tokens with default blocks (two of 128) and a [1, H, Q, K] bias; fwd, then the backward.
  q = jax.ShapeDtypeStruct((2, 197, 4, head_dim), dtype)
  bias = jax.ShapeDtypeStruct((1, 4, 197, 197), dtype)
  fwd = lambda q, k, v, b: flash_attention(q, k, v, bias=b, causal=True, interpret=False, seq_major=seq_major)
  bwd = jax.grad(lambda *a: fwd(*a).astype(jnp.float32).sum(), argnums=(0, 1, 2, 3))
  assert export(fwd, platform, q, q, q, bias).mlir_module().count(KERNEL_CALL[platform]) == 1
  assert export(bwd, platform, q, q, q, bias).mlir_module().count(KERNEL_CALL[platform]) == 3  # fwd, dK/dV, dQ


def test_splash_lowers_for_tpu():
  q = jax.ShapeDtypeStruct((2, 197, 4, 64), jnp.bfloat16)
  bwd = jax.grad(lambda *a: splash_attention(*a, causal=True, interpret=False).astype(jnp.float32).sum(), (0, 1, 2))
  assert export(bwd, 'tpu', q, q, q).mlir_module().count('tpu_custom_call') == 3


@pytest.fixture
def cudnn_on_xla(monkeypatch):
  """Runs the cuDNN dispatch through XLA's implementation (this machine has no cuDNN); returns the calls' (q length,
  implementation, keyword arguments)."""
  calls = []
  real = jax.nn.dot_product_attention

  def on_xla(q, *args, implementation=None, **kwargs):
    calls.append((q.shape[1], implementation, kwargs))
    return real(q, *args, implementation='xla', **kwargs)

  monkeypatch.setattr(jax.nn, 'dot_product_attention', on_xla)
  return calls


def test_cudnn_path_pads_lengths_and_masks_the_padding(cudnn_on_xla):
  # The cuDNN dispatch pads ViT's 197 tokens to 198 and passes the true lengths: compare with the reference, with and
  # without a bias.
  q, k, v, bias, _ = inputs(2, 197, 197, 3, 16, (1, 3, 197, 197))
  for b in (None, bias):
    np.testing.assert_allclose(kernels.attention(q, k, v, b, impl='cudnn'), reference_attention(q, k, v, b),
                               atol=1e-5)
  # Causal cross-attention: jax aligns its causal mask top-left, the reference bottom-right.
  np.testing.assert_allclose(kernels.attention(q[:, :40], k, v, impl='cudnn', causal=True),
                             reference_attention(q[:, :40], k, v, causal=True), atol=1e-5)
  length, implementation, options = cudnn_on_xla[0]
  assert (length, implementation) == (198, 'cudnn')
  assert options['key_value_seq_lengths'].tolist() == [197, 197]
  assert kernels.padded_length(197, 'cudnn') == 198 and kernels.padded_length(197, 'xla') == 197


@pytest.mark.parametrize('impl', ['xla', 'pallas', 'cudnn'])
def test_key_length_masks_padded_keys(impl, cudnn_on_xla):
  # Tokens padded past `key_length` (as ViT pads them for cuDNN) leave the real tokens' outputs and gradients as
  # attention over the real tokens alone gives them, with and without a bias.
  q, k, v, bias, do = inputs(2, 21, 21, 2, 16, (1, 2, 21, 21))
  pad = lambda x: jnp.pad(x, [(0, 0), (0, 3)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
  for b in (None, bias):
    padded_bias = None if b is None else jnp.pad(b, [(0, 0), (0, 0), (0, 3), (0, 3)])

    def padded(q, k, v, b):
      return kernels.attention(pad(q), pad(k), pad(v), padded_bias, impl=impl, key_length=21)[:, :21]

    ours = fast_jit(lambda *a: value_and_grads(padded, *a))(q, k, v, b, do)
    assert_close(ours[:4], reference(False, q, k, v, b, do)[:4], 1e-5)
  if impl == 'cudnn':  # unpadded lengths: no padding in the dispatch, cuDNN told the keys' length
    kernels.attention(pad(q), pad(k), pad(v), impl=impl, key_length=21)
    length, _, options = cudnn_on_xla[-1]
    assert length == 24 and options['key_value_seq_lengths'].tolist() == [21, 21]
  with pytest.raises(ValueError, match='key_length 25'):
    kernels.attention(pad(q), pad(k), pad(v), impl=impl, key_length=25)


def test_splash_is_refused_on_a_gpu(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  with pytest.raises(ConfigError, match="'splash' is JAX's TPU kernel"):
    kernels.resolve_impl('splash')
