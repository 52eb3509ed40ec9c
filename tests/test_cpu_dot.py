"""`cpu_dot.dot_general`: `lax.dot_general`'s values and gradients, with the output gradient behind a barrier."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vision_models.models import cpu_dot, layers


def _operands(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.normal(size=(2, 5, 6)), dtype), jnp.asarray(rng.normal(size=(6, 3, 4)), dtype))


def _grads(dot, x, w, **kwargs):
  return jax.grad(lambda x, w: jnp.sin(dot(x, w, (((2,), (0,)), ((), ())), **kwargs)).sum(), (0, 1))(x, w)


def test_values_and_gradients_equal_lax():
  x, w = _operands()
  numbers = (((2,), (0,)), ((), ()))
  chex.assert_trees_all_equal(cpu_dot.dot_general(x, w, numbers), lax.dot_general(x, w, numbers))
  chex.assert_trees_all_close(_grads(cpu_dot.dot_general, x, w), _grads(lax.dot_general, x, w), rtol=1e-6)


def test_mixed_precision_gradients_keep_the_operand_dtypes():
  x, w = _operands(jnp.bfloat16)
  ours = _grads(cpu_dot.dot_general, x, w, preferred_element_type=jnp.float32)
  chex.assert_trees_all_equal_dtypes(ours, (x, w))
  chex.assert_trees_all_close(ours, _grads(lax.dot_general, x, w, preferred_element_type=jnp.float32))


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the barrier is for XLA:CPU only')
def test_the_backward_pass_materialises_the_output_gradient_on_the_cpu():
  x, w = _operands()
  jaxpr = str(jax.make_jaxpr(lambda x, w: _grads(cpu_dot.dot_general, x, w))(x, w))
  assert 'optimization_barrier' in jaxpr
  assert 'optimization_barrier' not in str(jax.make_jaxpr(lambda x, w: _grads(lax.dot_general, x, w))(x, w))


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the barrier is for XLA:CPU only')
def test_dense_layers_and_einsum_use_it():
  x, w = _operands()
  einsum = lambda x, w: jnp.sin(jnp.einsum('bld,dhk->blhk', x, w, _dot_general=cpu_dot.dot_general)).sum()
  chex.assert_trees_all_close(jax.grad(einsum, (0, 1))(x, w), _grads(lax.dot_general, x, w), rtol=1e-6)
  dense = layers.dense(4)
  params = dense.init(jax.random.key(0), x)
  plain = nn.Dense(4).apply  # same parameter names, lax's product
  loss = lambda apply: jax.grad(lambda p: jnp.sin(apply(p, x)).sum())(params)
  chex.assert_trees_all_close(loss(dense.apply), loss(lambda p, x: plain(nn.unbox(p), x)), rtol=1e-6)
  assert 'optimization_barrier' in str(jax.make_jaxpr(lambda p: loss(dense.apply))(params))
