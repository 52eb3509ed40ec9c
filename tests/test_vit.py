"""ViT: registry, parameter counts against timm's (closed form), shapes and determinism."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_models import kernels, models
from vision_models.errors import ConfigError
from vision_models.models import vit


def timm_vit_count(width, depth, mlp, patch, image=224, classes=1000):
  """Section 8 of shared/references/models.md: the timm / vision_transformer layout."""
  tokens = (image // patch) ** 2
  block = 2 * width + (3 * width ** 2 + 3 * width) + (width ** 2 + width) + 2 * width + (width * mlp + mlp) + (
      mlp * width + width)
  return (patch ** 2 * 3 * width + width) + width + (tokens + 1) * width + depth * block + 2 * width + (
      width * classes + classes)


def abstract_params(model, image=224):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, image, image, 3))))
  return nn.unbox(variables['params'])


@pytest.mark.parametrize('name', [n for n in models.names() if n.startswith('vit_')])
def test_param_count_matches_timm(name):
  size, patch = name[4:].rstrip('0123456789'), int(name[4:].lstrip('tislbh'))
  width, depth, _, mlp = vit.VARIANTS[size]
  assert models.param_count(abstract_params(models.create(name))) == timm_vit_count(width, depth, mlp, patch)


def test_known_timm_counts():
  assert models.param_count(abstract_params(models.create('vit_b16'))) == 86_567_656
  assert models.param_count(abstract_params(models.create('vit_ti16'))) == 5_717_416
  assert models.param_count(abstract_params(models.create('vit_l16'))) == 304_326_632
  assert models.param_count(abstract_params(models.create('vit_b16'), image=384)) == 86_859_496


@pytest.mark.parametrize('pool,posemb', [('token', 'learn'), ('gap', 'sincos2d'), ('gap', 'learn')])
def test_forward_shapes_and_determinism(pool, posemb):
  model = models.create('vit', num_classes=7, patch_size=4, width=32, depth=2, num_heads=4, mlp_dim=64, pool=pool,
                        posemb=posemb, drop_path=0.1, dropout=0.1)
  images = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
  variables = nn.unbox(model.init(jax.random.key(0), images))
  # The head starts at zero (big_vision): give it values so the logits depend on the input.
  variables['params']['head']['kernel'] = jax.random.normal(jax.random.key(4), (32, 7))
  logits = model.apply(variables, images, train=False)
  assert logits.shape == (3, 7) and logits.dtype == jnp.float32
  np.testing.assert_array_equal(logits, model.apply(variables, images, train=False))
  a = model.apply(variables, images, train=True, rngs={'dropout': jax.random.key(2)})
  b = model.apply(variables, images, train=True, rngs={'dropout': jax.random.key(2)})
  c = model.apply(variables, images, train=True, rngs={'dropout': jax.random.key(3)})
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_num_classes_zero_returns_features():
  model = models.create('vit', num_classes=0, patch_size=4, width=32, depth=1, num_heads=2, mlp_dim=64)
  images = jnp.ones((2, 8, 8, 3))
  assert model.apply(nn.unbox(model.init(jax.random.key(0), images)), images).shape == (2, 32)


def test_unknown_model_is_a_config_error():
  with pytest.raises(ConfigError, match="unknown model 'vit_q16'.*close: vit"):
    models.create('vit_q16')
  with pytest.raises(ConfigError, match='config.model'):
    models.create('vit_b16', no_such_field=1)


@pytest.mark.parametrize('pool', ['token', 'gap'])
def test_tokens_padded_for_the_attention_kernel_change_nothing(pool, monkeypatch):
  # For cuDNN the trunk runs 197 tokens as 198, the padding masked as keys (`kernels.padded_length`); here three
  # padded tokens through the XLA kernel must leave the logits and every gradient as they were.
  model = models.create('vit', num_classes=5, patch_size=4, width=32, depth=2, num_heads=4, mlp_dim=64, pool=pool)
  images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  variables = nn.unbox(model.init(jax.random.key(0), images))
  variables['params'] = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape),
                                     variables['params'])

  def loss(params):
    return jnp.sum(model.apply({'params': params}, images) ** 2)

  expected = jax.value_and_grad(loss)(variables['params'])
  seen, attention = [], kernels.attention
  monkeypatch.setattr(kernels, 'padded_length', lambda length, impl, dtype: length + 3)
  monkeypatch.setattr(kernels, 'attention', lambda q, k, v, **kw: seen.append((k.shape[1], kw['key_length'])) or
                      attention(q, k, v, **kw))
  padded = jax.value_and_grad(loss)(variables['params'])
  assert set(seen) == {(16 + (pool == 'token') + 3, 16 + (pool == 'token'))}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), padded, expected)
  seen.clear()  # a model with another token mixer keeps its tokens as they are
  hybrid = models.create('vit', num_classes=5, patch_size=4, width=32, depth=2, num_heads=4, mlp_dim=64, pool='gap',
                         mixer_overrides={'1': 'pooling'})
  hybrid.init(jax.random.key(0), images)
  assert seen == [(16, None)]
