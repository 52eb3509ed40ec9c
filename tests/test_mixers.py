"""The token/channel mixer registry: every mixer in ViT (class token) and ConvNeXt (NHWC), reference computations,
per-layer overrides, parallel blocks and their checkpoint mapping, config errors."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_models import models
from vision_models.errors import ConfigError
from vision_models.models import layers, mixers, vit

FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
GRID, PREFIX, DIM = (5, 6), 1, 16  # 5x6 grid: windows of 4 need padding in both directions
WINDOW_2 = {n: {'window': 2} for n in ('window_attention', 'grid_attention', 'window_attention_relpos',
                                       'grid_attention_relpos')}


def init(module, *args):
  return nn.unbox(jax.jit(module.init, compiler_options=FAST_COMPILE)(jax.random.key(1), *args))


def tokens(seed=0, prefix=PREFIX):
  return jax.random.normal(jax.random.key(seed), (2, prefix + GRID[0] * GRID[1], DIM))


def build(name, prefix=PREFIX, **options):
  return mixers.token_mixer(name, dim=DIM, num_heads=2, grid=GRID, prefix=prefix, impl='xla', **options)


def loss_grads(model, variables, images):
  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run(params):
    def loss(p):  # Mixers with BatchNorm (mhca, e_mhsa, dilated_reparam) update their statistics.
      logits, _ = model.apply({**variables, 'params': p}, images, train=True, rngs={'dropout': jax.random.key(2)},
                              mutable=['batch_stats'])
      return jnp.mean(jnp.sin(logits)), logits
    return jax.value_and_grad(loss, has_aux=True)(params)
  return run(variables['params'])


@pytest.mark.parametrize('family', ['vit', 'convnext'])
def test_every_token_mixer_runs_in_vit_and_convnext(family):
  """One model whose block i has the i-th registered mixer (one compile for all): shapes, finite gradients, jit."""
  names = sorted(mixers.TOKEN_MIXERS)
  overrides = {str(i): name for i, name in enumerate(names)}
  images = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  if family == 'vit':  # Class token, 4x4 grid.
    model = models.create('vit', num_classes=3, patch_size=2, width=DIM, depth=len(names), num_heads=2, mlp_dim=32,
                          mixer_overrides=overrides, mixer_options=WINDOW_2)
    blocks = [f'blocks_{i}' for i in range(len(names))]
  else:  # prefix 0, stages of 4x4 and 2x2 tokens.
    half = len(names) // 2
    model = models.create('convnext', num_classes=3, depths=(half, len(names) - half), dims=(DIM, 32), patch_size=2,
                          mixer_overrides=overrides, kernel_size=3, depthwise_impl='shift', mixer_options=WINDOW_2)
    blocks = [f'stages_{int(i >= half)}_blocks_{i - half * (i >= half)}' for i in range(len(names))]
  variables = init(model, images)
  head = variables['params']['head']['kernel']  # ViT's head starts at zero: no gradient would reach the blocks.
  variables['params']['head']['kernel'] = jax.random.normal(jax.random.key(3), head.shape)
  (_, logits), grads = loss_grads(model, variables, images)
  assert logits.shape == (2, 3) and np.isfinite(logits).all()
  for name, block in zip(names, blocks):
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads[block])), name
    module = {'vit': {'attention': 'attn'}, 'convnext': {'dwconv': 'conv_dw'}}[family].get(name, 'mixer')
    mixer_grads = jax.tree.leaves(grads[block].get(module, {}))
    assert (not mixer_grads) == (name in ('identity', 'pooling')), name
    assert not mixer_grads or max(np.abs(g).max() for g in mixer_grads) > 0, name


def test_pooling_matches_numpy_avg_pool():
  x = np.asarray(tokens())
  y = np.asarray(build('pooling').apply({}, x))
  g = x[:, PREFIX:].reshape(2, *GRID, DIM)
  expected = np.zeros_like(g)
  for i in range(GRID[0]):
    for j in range(GRID[1]):  # count_include_pad=False: the mean over the in-bounds part of the 3x3 window
      expected[:, i, j] = g[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].mean(axis=(1, 2))
  np.testing.assert_allclose(y[:, PREFIX:], (expected - g).reshape(2, -1, DIM), atol=1e-5)
  np.testing.assert_allclose(y[:, :PREFIX], expected.mean(axis=(1, 2))[:, None] - x[:, :PREFIX], atol=1e-5)


@pytest.mark.parametrize('conv_impl', ['shift', 'xla'])
def test_dwconv_matches_lax_conv(conv_impl):
  x = tokens()
  module = build('dwconv', kernel_size=5, conv_impl=conv_impl)
  params = init(module, x)['params']
  params['bias'] = jax.random.normal(jax.random.key(3), params['bias'].shape)
  g = x[:, PREFIX:].reshape(2, *GRID, DIM)
  expected = jax.lax.conv_general_dilated(g, params['kernel'], (1, 1), 'SAME', feature_group_count=DIM,
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + params['bias']
  y = module.apply({'params': params}, x)
  np.testing.assert_allclose(y[:, PREFIX:], expected.reshape(2, -1, DIM), atol=1e-5)
  np.testing.assert_allclose(y[:, 0], expected.mean(axis=(1, 2)), atol=1e-5)


def group_mask(dilated, window):
  """[L, L] additive mask: grid tokens see their window's (or dilated grid group's) grid tokens, prefix all."""
  gh, gw = GRID
  hp, wp = -(-gh // window) * window, -(-gw // window) * window
  r, c = np.divmod(np.arange(gh * gw), gw)
  group = (r % (hp // window), c % (wp // window)) if dilated else (r // window, c // window)
  same = (group[0][:, None] == group[0][None]) & (group[1][:, None] == group[1][None])
  allowed = np.ones((PREFIX + gh * gw,) * 2, bool)
  allowed[PREFIX:, :PREFIX] = False
  allowed[PREFIX:, PREFIX:] = same
  return np.where(allowed, 0.0, -1e9).astype(np.float32)


@pytest.mark.parametrize('name,dilated', [('window_attention', False), ('grid_attention', True)])
def test_local_attention_matches_masked_attention(name, dilated):
  x = tokens()
  module = build(name, window=4)
  params = init(module, x)
  expected = layers.Attention(2).apply(params, x, bias=group_mask(dilated, 4)[None, None])
  np.testing.assert_allclose(module.apply(params, x), expected, atol=1e-5)


def test_linear_attention_matches_the_explicit_formula():
  x = tokens()
  module = build('linear_attention')
  params = init(module, x)['params']
  q, k, v = (np.einsum('bld,dhk->blhk', x, params[f'{n}_kernel']) + params[f'{n}_bias'] for n in
             ('query', 'key', 'value'))
  phi = lambda t: np.where(t > 0, t + 1, np.exp(t))  # noqa: E731  (elu + 1)
  weights = np.einsum('bqhd,bkhd->bhqk', phi(q), phi(k))
  mixed = np.einsum('bhqk,bkhd->bqhd', weights / weights.sum(-1, keepdims=True), v)
  expected = np.einsum('blhk,hkd->bld', mixed, params['out_kernel']) + params['out_bias']
  np.testing.assert_allclose(module.apply({'params': params}, x), expected, atol=1e-4)


def test_conv_mixers_match_timm():
  torch = pytest.importorskip('torch')
  metaformer = pytest.importorskip('timm.models.metaformer')
  inception_next = pytest.importorskip('timm.models.inception_next')
  x = tokens(prefix=0)
  nchw = torch.tensor(np.asarray(x).reshape(2, *GRID, DIM).transpose(0, 3, 1, 2))
  conv = lambda w: np.asarray(w.detach()).transpose(2, 3, 1, 0)  # noqa: E731  (OIHW → HWIO)
  theirs = inception_next.InceptionDWConv2d(DIM).eval()
  params = {n: {'kernel': conv(getattr(theirs, n).weight), 'bias': getattr(theirs, n).bias.detach().numpy()}
            for n in ('dwconv_hw', 'dwconv_w', 'dwconv_h')}
  for name, module, params in [
      ('inception_dwconv', theirs, params),
      ('sepconv', metaformer.SepConv(DIM).eval(), None)]:
    if params is None:
      sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
      sd['act1.scale'][:], sd['act1.bias'][:] = 0.7, 0.1
      module.load_state_dict({k: torch.tensor(v) for k, v in sd.items()})
      params = {'pwconv1': {'kernel': sd['pwconv1.weight'][:, :, 0, 0].T}, 'act1': {'scale': sd['act1.scale'],
                'bias': sd['act1.bias']}, 'dwconv': {'kernel': conv(module.dwconv.weight)},
                'pwconv2': {'kernel': sd['pwconv2.weight'][:, :, 0, 0].T}}
    ours = build(name, prefix=0, conv_impl='xla')
    assert jax.tree.map(np.shape, init(ours, x)['params']) == jax.tree.map(np.shape, params), name
    expected = module(nchw).detach().numpy().transpose(0, 2, 3, 1).reshape(x.shape)
    np.testing.assert_allclose(ours.apply({'params': params}, x), expected, atol=1e-5, err_msg=name)


def test_overrides_place_the_right_mixers():
  images = jnp.zeros((1, 8, 8, 3))
  model = models.create('vit', num_classes=3, patch_size=2, width=DIM, depth=4, num_heads=2, mlp_dim=32,
                        mixer_overrides={'1:3': 'dwconv', '-1': 'hyena2d'}, mixer_options={'kernel_size': 3})
  params = jax.eval_shape(model.init, jax.random.key(0), images)['params']
  assert 'attn' in params['blocks_0'] and 'mixer' not in params['blocks_0']
  for i in (1, 2):
    assert nn.unbox(params[f'blocks_{i}'])['mixer']['kernel'].shape == (3, 3, 1, DIM)
  assert 'filter' in params['blocks_3']['mixer']
  model = models.create('convnext', num_classes=3, depths=(1, 2, 1), dims=(8, 16, 32), patch_size=2,
                        mixer_overrides={'1:3': 'attention', '3': 'pooling'})
  params = jax.eval_shape(model.init, jax.random.key(0), images)['params']
  assert set(params['stages_0_blocks_0']) >= {'conv_dw'}
  for j in (0, 1):
    assert nn.unbox(params[f'stages_1_blocks_{j}'])['mixer']['query_kernel'].shape == (16, 1, 16)
  assert 'conv_dw' not in params['stages_2_blocks_0'] and 'mixer' not in params['stages_2_blocks_0']
  model = models.create('dit', input_size=8, patch_size=2, in_channels=4, hidden_size=DIM, depth=2, num_heads=2,
                        num_classes=10, mixer_overrides={'1': 'gated_conv'}, mlp='swiglu')
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)),
                          jnp.zeros((1,), jnp.int32))['params']
  assert 'query_kernel' in params['blocks_0']['mixer'] and 'in_proj' in params['blocks_1']['mixer']
  assert set(params['blocks_1']['mlp']) == {'fc1', 'fc1_gate', 'fc2'}


@pytest.mark.parametrize('kwargs,match', [
    (dict(mixer='mamba'), 'unknown token mixer'),
    (dict(mlp='kan'), 'unknown channel mixer'),
    (dict(mixer_overrides={'2:9': 'pooling'}), 'selects no block'),
    (dict(mixer_overrides={'a:b': 'pooling'}), 'not a block range'),
    (dict(mixer_overrides={'0:2': 'pooling', '1': 'dwconv'}), 'overlap'),
    (dict(mixer_overrides={'0': 'nope'}), 'unknown token mixer'),
    (dict(mixer_options={'kernel_sise': 3}), 'kernel_sise'),
    (dict(mixer='dwconv', mixer_options={'dwconv': {'window': 5}}), "does not take"),
    (dict(depth=3, parallel_blocks=True), 'even'),
])
def test_bad_configs_raise_config_error(kwargs, match):
  model = models.create('vit', **{**dict(num_classes=3, patch_size=4, width=DIM, depth=2, num_heads=2, mlp_dim=32),
                                  **kwargs})
  with pytest.raises(ConfigError, match=match):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def test_parallel_block_is_the_sum_of_its_branches():
  x = tokens()
  block = vit.Block(2, 32, mixers=('attention', 'attention'), grid=GRID, prefix=PREFIX)
  p = init(block, x)['params']
  p = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(a.size), a.shape), p)  # non-trivial norms
  ln = lambda name, t: nn.LayerNorm(1e-6).apply({'params': p[name]}, t)  # noqa: E731
  attn = lambda b, t: layers.Attention(2).apply({'params': p[f'attn_{b}']}, ln(f'norm1_{b}', t))  # noqa: E731
  mlp = lambda b, t: layers.Mlp(32).apply({'params': p[f'mlp_{b}']}, ln(f'norm2_{b}', t))  # noqa: E731
  h = x + attn(0, x) + attn(1, x)
  np.testing.assert_allclose(block.apply({'params': p}, x), h + mlp(0, h) + mlp(1, h), atol=1e-5)


def test_parallel_from_sequential_maps_vit_and_dit_checkpoints():
  kw = dict(num_classes=3, patch_size=2, width=DIM, depth=4, num_heads=2, mlp_dim=32, layer_scale=0.5,
            mixer_overrides={'1': 'dwconv'})
  images = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  sequential = models.create('vit', **kw)
  parallel = models.create('vit', parallel_blocks=True, **kw)
  seq_params = init(sequential, images)['params']
  par_shapes = jax.tree.map(np.shape, init(parallel, images)['params'])
  converted = mixers.parallel_from_sequential(seq_params)
  assert jax.tree.map(np.shape, converted) == par_shapes
  assert models.param_count(converted) == models.param_count(seq_params)
  # Exact identity: with the second branch's output projections zeroed, blocks 2i+1 are identities in the
  # sequential model and contribute nothing in the parallel one, so both models compute the same function.
  for i in (1, 3):
    mix = seq_params[f'blocks_{i}']['attn' if i == 3 else 'mixer']
    for key in ('out_kernel', 'out_bias', 'kernel', 'bias'):
      if key in mix:
        mix[key] = jnp.zeros_like(mix[key])
    seq_params[f'blocks_{i}']['mlp']['fc2'] = jax.tree.map(jnp.zeros_like, seq_params[f'blocks_{i}']['mlp']['fc2'])
  seq_params['head']['kernel'] = jax.random.normal(jax.random.key(5), seq_params['head']['kernel'].shape)
  np.testing.assert_allclose(parallel.apply({'params': mixers.parallel_from_sequential(seq_params)}, images),
                             sequential.apply({'params': seq_params}, images), atol=1e-5)
  # DiT: the same layout (one adaLN modulation per branch), the same parameter count.
  dkw = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=DIM, depth=2, num_heads=2, num_classes=10)
  args = (jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
  seq = jax.eval_shape(models.create('dit', **dkw).init, jax.random.key(0), *args)['params']
  par = jax.eval_shape(models.create('dit', parallel_blocks=True, **dkw).init, jax.random.key(0), *args)['params']
  assert jax.tree.map(np.shape, mixers.parallel_from_sequential(nn.unbox(seq))) == jax.tree.map(np.shape,
                                                                                                nn.unbox(par))
