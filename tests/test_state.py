"""`state.jit_init` (a faster compile on the CPU) gives bitwise the values of a plain `jax.jit`."""
import chex
import jax
import jax.numpy as jnp
import pytest

from vision_models import models
from vision_models.training import state


@pytest.mark.parametrize('name,kwargs,size', [
    ('vit_ti16', dict(num_classes=10), 32),
    ('maxvit', dict(image_size=16, stem_width=16, dims=(32, 64), depths=(1, 1), partition_ratio=8, num_classes=10), 16),
])
def test_jit_init_gives_the_values_of_a_plain_jit(name, kwargs, size):
  model = models.create(name, **kwargs)
  init = lambda rng: model.init(rng, jnp.zeros((2, size, size, 3)))
  key = jax.random.key(3)
  chex.assert_trees_all_equal(state.jit_init(init)(key), jax.jit(init)(key))
