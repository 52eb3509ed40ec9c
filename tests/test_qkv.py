"""Attention's q, k, v projections: off the CPU three products forward and one backward (`models/qkv.py`), giving the
one product's values and gradients, with and without a bias."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

qkv = importlib.import_module('vision_models.models.qkv')


@pytest.mark.parametrize('with_bias', [True, False])
def test_three_products_match_the_one(with_bias, monkeypatch):
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731
  x, kernel = normal(2, 5, 12), normal(12, 2, 3, 6)  # [batch, tokens, embed], [embed, heads, q/k/v, head_dim]
  bias = normal(2, 3, 6) if with_bias else None
  cotangents = tuple(normal(2, 5, 2, 6) for _ in range(3))

  def values_and_grads():
    out, vjp = jax.vjp(qkv.project, x, kernel, bias)
    return out, vjp(cotangents)

  one = values_and_grads()
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  three = values_and_grads()
  assert 'custom_vjp_call' in str(jax.make_jaxpr(qkv.project)(x, kernel, bias))  # the GPU form was traced
  assert jax.tree.structure(three) == jax.tree.structure(one)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), three, one)
