"""QK normalisation in attention (against an explicit numpy formula) and DiT's AdaLN-LoRA conditioning (parameter
count formula; zero LoRA ≡ the shared modulation; a LoRA ≡ per-block modulations with merged weights W + A·B)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from vision_models import models
from vision_models.models import layers, mixers


def randomize(tree, seed=0, std=0.3):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([std * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def numpy_attention(x, p, kind, heads):
  x = np.asarray(x, np.float64)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)

  def proj(name):
    return np.einsum('bld,dhk->blhk', x, p[f'{name}_kernel']) + p[f'{name}_bias']

  def norm(y, q):
    if kind == 'layernorm':
      y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-6)
      return y * q['scale'] + q['bias']
    return y / np.sqrt((y ** 2).mean(-1, keepdims=True) + 1e-6) * q['scale']

  q, k, v = norm(proj('query'), p['q_norm']), norm(proj('key'), p['k_norm']), proj('value')
  logits = np.einsum('bqhk,bshk->bhqs', q, k) / np.sqrt(q.shape[-1])
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = np.einsum('bhqs,bshk->bqhk', weights, v)
  return np.einsum('bqhk,hkd->bqd', out, p['out_kernel']) + p['out_bias']


@pytest.mark.parametrize('kind', ['layernorm', 'rmsnorm'])
def test_qk_norm_attention_matches_numpy(kind):
  x = jax.random.normal(jax.random.key(0), (2, 5, 16))
  module = layers.Attention(4, qk_norm=kind)
  params = randomize(nn.unbox(module.init(jax.random.key(1), x))['params'])
  assert params['q_norm']['scale'].shape == (4,)  # One [head_dim] scale shared by the heads.
  np.testing.assert_allclose(module.apply({'params': params}, x), numpy_attention(x, params, kind, 4), atol=1e-5)
  # The shared mixer registry passes the option through (config.model.mixer_options).
  built = mixers.token_mixer('attention', dim=16, num_heads=4, qk_norm=kind)
  np.testing.assert_allclose(built.apply({'params': params}, x), numpy_attention(x, params, kind, 4), atol=1e-5)
  with pytest.raises(ValueError, match='qk_norm'):
    layers.Attention(4, qk_norm='l2').init(jax.random.key(0), x)


D, DEPTH, HEADS = 32, 3, 4


def dit(**kwargs):
  return models.create('dit', input_size=8, in_channels=2, patch_size=2, hidden_size=D, depth=DEPTH, num_heads=HEADS,
                       num_classes=5, learn_sigma=False, **kwargs)


INPUTS = (jax.random.normal(jax.random.key(2), (3, 8, 8, 2)), jnp.array([3.0, 500.0, 999.0]), jnp.array([0, 4, 2]))


def init(model):
  return nn.unbox(model.init(jax.random.key(0), *INPUTS))


def test_dit_qk_norm_parameters():
  base = models.param_count(init(dit())['params'])
  head_dim = D // HEADS
  assert models.param_count(init(dit(qk_norm='rmsnorm'))['params']) == base + DEPTH * 2 * head_dim
  assert models.param_count(init(dit(qk_norm='layernorm'))['params']) == base + DEPTH * 4 * head_dim


@pytest.mark.parametrize('rank', [0, 4])
def test_adaln_lora_parameter_count(rank):
  base = models.param_count(init(dit())['params'])
  adaln = 6 * D * D + 6 * D  # One adaLN modulation: kernel [D, 6D] and bias.
  got = models.param_count(init(dit(adaln_lora_rank=rank))['params'])
  assert got == base - DEPTH * adaln + adaln + DEPTH * 7 * rank * D


def test_adaln_lora_reduces_to_the_shared_modulation_and_merges_into_per_block_weights():
  lora, variables = dit(adaln_lora_rank=4), init(dit(adaln_lora_rank=4))
  params = randomize(variables['params'])
  shared = params['adaLN_modulation']
  flat = traverse_util.flatten_dict(params, sep='/')
  zero = traverse_util.unflatten_dict({k: jnp.zeros_like(v) if 'lora_up' in k else v for k, v in flat.items()},
                                      sep='/')
  out_zero = lora.apply({**variables, 'params': zero}, *INPUTS)
  rank0 = {k: v for k, v in flat.items() if 'lora' not in k}
  out_rank0 = dit(adaln_lora_rank=0).apply({**variables, 'params': traverse_util.unflatten_dict(rank0, sep='/')},
                                           *INPUTS)
  np.testing.assert_array_equal(out_zero, out_rank0)
  assert float(jnp.abs(out_rank0).max()) > 0.1

  # Standard DiT whose block i modulation kernel is W + A_i·B_i (same bias): the LoRA model computes exactly that.
  def per_block(lora_params):
    out = {k: v for k, v in lora_params.items() if k != 'adaLN_modulation'}
    for i in range(DEPTH):
      block = dict(out[f'blocks_{i}'])
      a, b = block.pop('adaLN_lora_down', None), block.pop('adaLN_lora_up', None)
      kernel = shared['kernel'] + (a['kernel'] @ b['kernel'] if a is not None else 0)
      out[f'blocks_{i}'] = {**block, 'adaLN_modulation': {'kernel': kernel, 'bias': shared['bias']}}
    return out
  standard = dit()
  np.testing.assert_allclose(standard.apply({**variables, 'params': per_block(zero)}, *INPUTS), out_zero, atol=1e-5)
  out_lora = lora.apply({**variables, 'params': params}, *INPUTS)
  assert float(jnp.abs(out_lora - out_zero).max()) > 1e-2
  np.testing.assert_allclose(standard.apply({**variables, 'params': per_block(params)}, *INPUTS), out_lora,
                             rtol=1e-4, atol=1e-4)
