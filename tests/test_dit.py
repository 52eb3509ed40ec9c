"""DiT: exact parameter counts of the official models, the fixed embeddings, the official initialisation, the
call contract, and the pluggable mixer / MLP."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_models import models
from vision_models.errors import ConfigError
from vision_models.models import dit, mixers

# shared/references/models.md section 0 (official models.py, 4-channel latents, 1000 classes, learn_sigma).
COUNTS = {  # name: (total incl. the frozen pos_embed at 256 px, trainable)
    'dit_s2': (32_963_360, 32_865_056), 'dit_s4': (32_945_024, 32_920_448), 'dit_s8': (33_148_160, 33_142_016),
    'dit_b2': (130_512_416, 130_315_808), 'dit_b4': (130_475_648, 130_426_496),
    'dit_b8': (130_881_536, 130_869_248), 'dit_l2': (458_102_816, 457_840_672),
    'dit_l4': (458_053_760, 457_988_224), 'dit_l8': (458_594_816, 458_578_432),
    'dit_xl2': (675_129_632, 674_834_720), 'dit_xl4': (675_074_432, 675_000_704),
    'dit_xl8': (675_683_072, 675_664_640),
}


def inputs(batch=2, size=32, channels=4):
  """numpy inputs: jax.random would compile a kernel per shape."""
  x = np.random.default_rng(1).standard_normal((batch, size, size, channels)).astype(np.float32)
  return x, np.linspace(0, 999, batch).astype(np.float32), np.arange(batch, dtype=np.int32) % 10


def abstract_variables(model, size=32, channels=4):
  return nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs(1, size, channels))))


def tiny(**kwargs):
  return models.create('dit', input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4,
                       num_classes=10, **kwargs)


@pytest.mark.parametrize('name', sorted(COUNTS))
def test_param_counts_match_official(name):
  variables = abstract_variables(models.create(name))
  trainable = models.param_count(variables['params'])
  assert (trainable + models.param_count(variables['constants']), trainable) == COUNTS[name]


def test_xl2_at_512_counts():
  variables = abstract_variables(models.create('dit_xl2', input_size=64), size=64)
  assert models.param_count(variables['params']) + models.param_count(variables['constants']) == 676_014_368


def test_every_param_has_logical_axes():
  boxed = jax.eval_shape(lambda: tiny().init(jax.random.key(0), *inputs(1, 8)))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(leaf, nn.Partitioned) for leaf in leaves)


def mae_pos_embed(dim, grid):
  """The official `get_2d_sincos_pos_embed` (MAE), transcribed step by step."""
  gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))

  def one_d(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.einsum('m,d->md', pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  return np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)


@pytest.mark.parametrize('dim,grid', [(64, 4), (384, 16), (1152, 32)])
def test_pos_embed_is_the_official_one(dim, grid):
  np.testing.assert_allclose(dit.sincos_2d(grid, dim), mae_pos_embed(dim, grid).astype(np.float32), atol=1e-7)


def test_timestep_embedding_is_cos_then_sin():
  t = jnp.array([0.0, 3.0, 999.0])
  emb = dit.timestep_embedding(t, 8)
  freqs = np.exp(-np.log(10000) * np.arange(4) / 4)
  args = np.asarray(t)[:, None] * freqs
  np.testing.assert_allclose(emb, np.concatenate([np.cos(args), np.sin(args)], 1), rtol=1e-5, atol=1e-5)


def test_official_init():
  model = models.create('dit_s2', input_size=8, depth=1)
  variables = nn.unbox(jax.jit(model.init)(jax.random.key(0), *inputs(2, 8)))
  p = variables['params']
  d = 384
  assert not np.any(p['blocks_0']['adaLN_modulation']['kernel'])
  assert not np.any(p['final_linear']['kernel']) and not np.any(p['final_adaLN_modulation']['kernel'])
  # xavier_uniform of the fused (3d, d) qkv matrix and of the flattened patch-embedding matrix.
  q = np.abs(p['blocks_0']['mixer']['query_kernel'])
  assert 0.95 * np.sqrt(6 / (4 * d)) < q.max() <= np.sqrt(6 / (4 * d))
  patch = np.abs(p['x_embedder']['kernel'])
  assert 0.95 * np.sqrt(6 / (16 + d)) < patch.max() <= np.sqrt(6 / (16 + d))
  assert abs(np.std(p['y_embedder']['embedding']) - 0.02) < 1e-3
  assert abs(np.std(p['t_embedder_mlp_0']['kernel']) - 0.02) < 1e-3
  np.testing.assert_allclose(variables['constants']['pos_embed'][0], dit.sincos_2d(4, d))
  # adaLN-Zero: the untrained model outputs zeros.
  np.testing.assert_array_equal(jax.jit(model.apply)(variables, *inputs(2, 8)), 0.0)


def jit_apply(model):
  return jax.jit(model.apply, static_argnames='train')


def randomised(model, x, seed=0):
  """Variables with every parameter drawn at random in numpy (the zero inits would hide most of the network; numpy
  keeps the test free of compiling an init)."""
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), *inputs(1, x.shape[1]))))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32), shapes['params'])
  pos = dit.sincos_2d(model.input_size // model.patch_size, model.hidden_size)[None]
  return {'params': params, 'constants': {'pos_embed': pos}}


def test_call_contract_label_dropout_remat_and_bfloat16():
  model = tiny()
  apply = jit_apply(model)
  x, t, y = inputs(4, 8)
  variables = randomised(model, x)
  out = apply(variables, x, t, y, train=False)
  assert out.shape == (4, 8, 8, 8) and out.dtype == jnp.float32
  # The null label (10) is a real embedding row: it changes the output.
  null = apply(variables, x, t, np.full_like(y, 10))
  assert not np.allclose(out, null)
  # Label dropout in training draws from the 'dropout' rng; with probability 1 every label is the null one.
  dropped = jit_apply(tiny(class_dropout_prob=1.0))(variables, x, t, y, train=True,
                                                    rngs={'dropout': jax.random.key(3)})
  np.testing.assert_allclose(dropped, null, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jit_apply(tiny(remat=True))(variables, x, t, y), out, rtol=1e-5, atol=1e-6)
  low = jit_apply(tiny(dtype=jnp.bfloat16))(variables, x, t, y)
  assert low.dtype == jnp.float32
  np.testing.assert_allclose(low, out, atol=0.1 * float(np.abs(out).max()))


def test_pluggable_mixer_and_mlp():
  class MeanMixer(nn.Module):  # Token mixing by the global mean: a stand-in for a new operator.
    @nn.compact
    def __call__(self, x, train=False):
      return jnp.broadcast_to(nn.Dense(x.shape[-1])(x.mean(1, keepdims=True)), x.shape)

  mixers.register_token_mixer('test_mean', lambda *, grid, name, **_: MeanMixer(name=name))
  try:
    model = tiny(mixer='test_mean', mlp='swiglu')
    x, t, y = inputs(2, 8)
    variables = randomised(model, x)
    block = variables['params']['blocks_0']
    assert set(block['mixer']) == {'Dense_0'} and set(block['mlp']) == {'fc1', 'fc1_gate', 'fc2'}
    assert jit_apply(model)(variables, x, t, y).shape == (2, 8, 8, 8)
  finally:
    del mixers.TOKEN_MIXERS['test_mean']
  with pytest.raises(ConfigError, match='mixer'):
    jax.eval_shape(tiny(mixer='nope').init, jax.random.key(0), *inputs(1, 8))


def test_wrong_input_size_is_a_config_error():
  with pytest.raises(ConfigError, match='input_size'):
    jax.eval_shape(tiny().init, jax.random.key(0), *inputs(1, 16))


def test_learn_sigma_false_outputs_eps_only():
  model = tiny(learn_sigma=False)
  x, t, y = inputs(2, 8)
  out = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x, t, y), x, t, y))
  assert out.shape == (2, 8, 8, 4)
