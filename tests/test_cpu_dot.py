"""`cpu_dot.dot_general`: `lax.dot_general`'s values and gradients, a dense layer's weight gradient as one product."""
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vision_models import parallel
from vision_models.models import cpu_dot, layers

DENSE = (((2,), (0,)), ((), ()))


def _operands(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.normal(size=(2, 5, 6)), dtype), jnp.asarray(rng.normal(size=(6, 3, 4)), dtype))


def _grads(dot, x, w, numbers=DENSE, **kwargs):
  return jax.grad(lambda x, w: jnp.sin(dot(x, w, numbers, **kwargs)).sum(), (0, 1))(x, w)


@pytest.mark.parametrize('numbers,rhs', [(DENSE, lambda w: w), ((((2,), (1,)), ((), ())), lambda w: w.swapaxes(0, 1)),
                                         ((((2,), (0,)), ((0,), (2,))), lambda w: w[:, :, :2])],
                         ids=['dense', 'rhs contracting its middle', 'batched'])
def test_values_and_gradients_equal_lax(numbers, rhs):
  x, w = _operands()
  w = rhs(w)
  chex.assert_trees_all_equal(cpu_dot.dot_general(x, w, numbers), lax.dot_general(x, w, numbers))
  chex.assert_trees_all_close(_grads(cpu_dot.dot_general, x, w, numbers), _grads(lax.dot_general, x, w, numbers),
                              rtol=1e-5)


def test_mixed_precision_gradients_keep_the_operand_dtypes():
  x, w = _operands(jnp.bfloat16)
  ours = _grads(cpu_dot.dot_general, x, w, preferred_element_type=jnp.float32)
  chex.assert_trees_all_equal_dtypes(ours, (x, w))
  chex.assert_trees_all_close(ours, _grads(lax.dot_general, x, w, preferred_element_type=jnp.float32))


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the rewrite is for XLA:CPU only')
def test_the_weight_gradient_reads_the_output_gradient_as_stored():
  """JAX's transpose rule made XLA:CPU write the output gradient transposed, [5, 2·6·6] (a 3x slower product)."""
  x = jnp.ones((2, 6, 6, 8))
  grads = lambda dot: jax.grad(lambda w: jnp.sin(dot(x, w, (((3,), (0,)), ((), ())))).sum())
  transposed = re.compile(r'= f32\[5,72\]')  # the output gradient, features major
  hlo = lambda dot: jax.jit(grads(dot)).lower(jnp.ones((8, 5))).compile().as_text()
  assert transposed.search(hlo(lax.dot_general))  # the rule's layout, so the check below can fail
  assert not transposed.search(hlo(cpu_dot.dot_general))


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the rewrite is for XLA:CPU only')
def test_dense_layers_and_einsum_use_it():
  x, w = _operands()
  einsum = lambda x, w: jnp.sin(jnp.einsum('bld,dhk->blhk', x, w, _dot_general=cpu_dot.dot_general)).sum()
  chex.assert_trees_all_close(jax.grad(einsum, (0, 1))(x, w), _grads(lax.dot_general, x, w), rtol=1e-5)
  dense = layers.dense(4)
  params = dense.init(jax.random.key(0), x)
  plain = nn.Dense(4).apply  # same parameter names, lax's product
  loss = lambda apply: jax.grad(lambda p: jnp.sin(apply(p, x)).sum())(params)
  chex.assert_trees_all_close(loss(dense.apply), loss(lambda p, x: plain(nn.unbox(p), x)), rtol=1e-5)
  over_positions = 'dot_general[dimension_numbers=(([0], [0]), ([], []))]'  # the 2-D weight gradient
  assert over_positions in str(jax.make_jaxpr(lambda p: loss(dense.apply))(params))
  assert over_positions not in str(jax.make_jaxpr(lambda p: loss(lambda p, x: plain(nn.unbox(p), x)))(params))


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the hidden layer is split on the CPU only')
def test_hidden_chunks_of_at_most_768_units_unless_tensor_parallel():
  assert [cpu_dot.hidden_chunks(n, 'mlp') for n in (384, 768, 769, 1536, 2048, 3072)] == [1, 1, 2, 2, 3, 4]
  devices = np.array(jax.devices()[:2])
  with nn.logical_axis_rules(parallel.DEFAULT_RULES):
    with jax.set_mesh(jax.sharding.Mesh(devices.reshape(1, 2), ('data', 'tensor'))):  # 'mlp' → tensor, 2 devices
      assert cpu_dot.hidden_chunks(3072, 'mlp') == 1
      assert cpu_dot.hidden_chunks(3072, None) == 4
    with jax.set_mesh(jax.sharding.Mesh(devices.reshape(2, 1), ('data', 'tensor'))):  # data parallel only
      assert cpu_dot.hidden_chunks(3072, 'mlp') == 4
