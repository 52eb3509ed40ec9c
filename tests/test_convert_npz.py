"""The official ViT / Mixer `.npz` checkpoints: synthetic files with the exact key layouts (vision_transformer,
big_vision plain and scan-stacked, Mixer), loaded by `from_vit_npz` and compared with timm, which loads the same ViT
files with its own `_load_weights` (max abs logit difference ≤ 1e-4), position-embedding resampling included."""
import numpy as np
import pytest

from parity import randomise
from vision_models import convert
from vision_models.errors import ConfigError

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

WIDTH, DEPTH, HEADS, MLP, PATCH, CLASSES = 64, 2, 4, 128, 8, 10


def vit_arrays(layout, grid=4, cls=True):
  """Random ViT weights under the key names and shapes of `layout`: 'vit_jax' (vision_transformer), 'big_vision'
  (params/ prefix, top-level pos_embedding without a class-token row) or 'big_vision_scan' (stacked blocks)."""
  rng = np.random.default_rng(0)
  rand = lambda *shape: rng.normal(0, 0.02, shape).astype(np.float32)  # noqa: E731
  ln = lambda: {'scale': 1 + 10 * rand(WIDTH), 'bias': 10 * rand(WIDTH)}  # noqa: E731
  vit_jax = layout == 'vit_jax'
  mha, ln2, mlp = ('MultiHeadDotProductAttention_1', 'LayerNorm_2', 'MlpBlock_3') if vit_jax else (
      'MultiHeadDotProductAttention_0', 'LayerNorm_1', 'MlpBlock_0')
  blocks = []
  for _ in range(DEPTH):
    block = {}
    for key, value in (('LayerNorm_0', ln()), (ln2, ln())):
      block.update({f'{key}/{k}': v for k, v in value.items()})
    for n in ('query', 'key', 'value'):
      block[f'{mha}/{n}/kernel'] = rand(WIDTH, HEADS, WIDTH // HEADS)
      block[f'{mha}/{n}/bias'] = rand(HEADS, WIDTH // HEADS)
    block[f'{mha}/out/kernel'], block[f'{mha}/out/bias'] = rand(HEADS, WIDTH // HEADS, WIDTH), rand(WIDTH)
    block[f'{mlp}/Dense_0/kernel'], block[f'{mlp}/Dense_0/bias'] = rand(WIDTH, MLP), rand(MLP)
    block[f'{mlp}/Dense_1/kernel'], block[f'{mlp}/Dense_1/bias'] = rand(MLP, WIDTH), rand(WIDTH)
    blocks.append(block)
  out = {'embedding/kernel': rand(PATCH, PATCH, 3, WIDTH), 'embedding/bias': rand(WIDTH),
         'head/kernel': rand(WIDTH, CLASSES), 'head/bias': rand(CLASSES)}
  out.update({f'Transformer/encoder_norm/{k}': v for k, v in ln().items()})
  if cls:
    out['cls'] = rand(1, 1, WIDTH)
  if vit_jax:
    out['Transformer/posembed_input/pos_embedding'] = rand(1, grid * grid + int(cls), WIDTH)
  else:
    out['pos_embedding'] = rand(1, grid * grid, WIDTH)
  if layout == 'big_vision_scan':
    out.update({f'Transformer/encoderblock/{k}': np.stack([b[k] for b in blocks]) for k in blocks[0]})
  else:
    out.update({f'Transformer/encoderblock_{i}/{k}': v for i, b in enumerate(blocks) for k, v in b.items()})
  return out if vit_jax else {f'params/{k}': v for k, v in out.items()}


def timm_vit(image_size, cls, no_embed_class):
  kwargs = dict(class_token=True) if cls else dict(class_token=False, global_pool='avg', fc_norm=False)
  return timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=image_size, patch_size=PATCH,
                           embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_ratio=MLP / WIDTH, num_classes=CLASSES,
                           no_embed_class=no_embed_class, **kwargs).eval()


def logits_diff(module, variables, reference, image_size):
  import jax
  images = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    expected = reference(images).numpy()
  got = jax.jit(lambda v, x: module.apply(v, x))(variables, images.numpy().transpose(0, 2, 3, 1))
  return float(np.abs(np.asarray(got) - expected).max())


@pytest.mark.parametrize('layout,cls,image_size', [
    ('vit_jax', True, 32), ('vit_jax', True, 48), ('big_vision', True, 32), ('big_vision_scan', True, 48),
    ('big_vision', False, 32)])
def test_vit_npz_matches_timm(tmp_path, layout, cls, image_size):
  path = str(tmp_path / 'vit.npz')
  np.savez(path, **vit_arrays(layout, cls=cls))
  reference = timm_vit(image_size, cls, no_embed_class=layout != 'vit_jax')
  reference.load_pretrained(path)  # timm resamples the position embedding itself
  module, variables = convert.from_vit_npz(path, 'vit', image_size=image_size)
  assert (module.width, module.depth, module.num_heads, module.mlp_dim, module.num_classes) == (
      WIDTH, DEPTH, HEADS, MLP, CLASSES)
  assert variables['params']['pos_embed'].shape[1] == (image_size // PATCH) ** 2 + int(layout == 'vit_jax')
  assert logits_diff(module, variables, reference, image_size) <= 1e-4


def mixer_arrays(model):
  """A timm Mixer's weights in the layout of the official Mixer checkpoints (vit_jax / big_vision)."""
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  dense = lambda src: {'kernel': sd[f'{src}.weight'].T, 'bias': sd[f'{src}.bias']}  # noqa: E731
  ln = lambda src: {'scale': sd[f'{src}.weight'], 'bias': sd[f'{src}.bias']}  # noqa: E731
  tree = {'stem': {'kernel': sd['stem.proj.weight'].transpose(2, 3, 1, 0), 'bias': sd['stem.proj.bias']},
          'pre_head_layer_norm': ln('norm'), 'head': dense('head')}
  for i in range(len(model.blocks)):
    tree[f'MixerBlock_{i}'] = {
        'LayerNorm_0': ln(f'blocks.{i}.norm1'), 'LayerNorm_1': ln(f'blocks.{i}.norm2'),
        'token_mixing': {'Dense_0': dense(f'blocks.{i}.mlp_tokens.fc1'),
                         'Dense_1': dense(f'blocks.{i}.mlp_tokens.fc2')},
        'channel_mixing': {'Dense_0': dense(f'blocks.{i}.mlp_channels.fc1'),
                           'Dense_1': dense(f'blocks.{i}.mlp_channels.fc2')}}
  return _flatten(tree)


def _flatten(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    out.update(_flatten(v, f'{prefix}{k}/') if isinstance(v, dict) else {f'{prefix}{k}': v})
  return out


def test_mixer_npz_matches_timm(tmp_path):
  from timm.models.mlp_mixer import MlpMixer
  reference = randomise(MlpMixer(num_classes=CLASSES, img_size=32, patch_size=PATCH, num_blocks=2, embed_dim=WIDTH))
  path = str(tmp_path / 'mixer.npz')
  np.savez(path, **mixer_arrays(reference))
  module, variables = convert.from_vit_npz(path, 'mixer')
  assert (module.tokens_mlp_dim, module.channels_mlp_dim) == (WIDTH // 2, 4 * WIDTH)
  assert logits_diff(module, variables, reference, 32) <= 1e-4
  with pytest.raises(ConfigError, match='training resolution 32'):
    convert.from_vit_npz(path, 'mixer', image_size=64)
  with pytest.raises(ConfigError, match='mixer checkpoint'):
    convert.from_vit_npz(path, 'vit_b16')


def test_npz_errors(tmp_path):
  arrays = vit_arrays('vit_jax')
  with pytest.raises(ConfigError, match="does not match 'vit_b16'.*width=64"):
    convert.from_vit_npz(arrays, 'vit_b16')
  with pytest.raises(ConfigError, match='not used: pre_logits/kernel'):
    convert.from_vit_npz({**arrays, 'pre_logits/kernel': np.zeros((WIDTH, WIDTH))}, 'vit')
  with pytest.raises(ConfigError, match='not a ViT or Mixer checkpoint'):
    convert.from_vit_npz({'conv1/kernel': np.zeros(3)}, 'vit')
