"""Every config in configs/ trains two steps through the real trainer with its model shrunk, so no config rots:
ImageNet recipes on `tfds.testing.mock_data` (random JPEGs behind the real imagenet2012 builder), the digits
quickstarts on the local digits dataset. Their preprocessing strings, optimizer, mixup and EMA settings all run."""
import importlib
import os

import ml_collections
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_CONFIGS = {'common', '__init__'}
# Configs whose data this test cannot mock, trained two steps by the test named instead.
ELSEWHERE = {'dit_xl2': 'test_diffusion_latents.py'}  # Latents written by diffusion.encode_latents.
CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs'))
                 if f.endswith('.py') and f[:-3] not in NOT_CONFIGS)
ARG_VARIANTS = ['vit_b16:device_augment']  # `--config=configs/NAME.py:ARG` variants that change the code path.
# Model-name prefix → overrides that keep the family's code paths but make it tiny. A config whose model matches
# none fails below: add its family here.
SHRINK = {
    'vit': dict(width=32, depth=2, num_heads=2, mlp_dim=64),
    'deit': dict(width=32, depth=2, num_heads=2, mlp_dim=64),
    'convnext': dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)),
    'mixer': dict(width=32, depth=2, tokens_mlp_dim=16, channels_mlp_dim=64),
    'maxvit': dict(stem_width=8, dims=(8, 16, 16, 16), depths=(1, 1, 1, 1), head_dim=8),
    'dit': dict(hidden_size=32, depth=2, num_heads=2),
    'poolformer': dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)),
    'convformer': dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)),
    'caformer': dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)),
    'inception_next': dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)),
    'nextvit': dict(depths=(1, 1, 5, 1), stem_dims=(16, 8, 16)),  # Its widths follow from the depths.
    'unireplknet': dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), kernel_sizes=((3,), (13,), (13,), (3,))),
}
MOCK_SIZES = {'train': 32, 'validation': 16}
SMOKE_RESOLUTION = 64  # ImageNet recipes run at 64 px (their preprocessing rescaled), the size that keeps CI fast.


def load(name):
  name, _, arg = name.partition(':')
  return importlib.import_module(f'configs.{name}').get_config(arg or None)


def shrink(model: dict) -> dict:
  for prefix, overrides in SHRINK.items():
    if model['name'].startswith(prefix):
      return {**model, **overrides}
  raise AssertionError(f'no shrink for model {model["name"]!r}: add its family to SHRINK in tests/test_configs.py')


@pytest.fixture(scope='module')
def imagenet_metadata(tmp_path_factory):
  """A data dir holding only imagenet2012's metadata (its split sizes), for `mock_data` to serve examples from."""
  import tensorflow_datasets as tfds
  data_dir = str(tmp_path_factory.mktemp('mock_tfds'))
  builder = tfds.builder('imagenet2012', data_dir=data_dir)
  template = tfds.core.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name='imagenet2012',
                                           filetype_suffix='tfrecord')
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0, filename_template=template.replace(split=split))
      for split, n in MOCK_SIZES.items()]))
  os.makedirs(builder.data_dir, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)
  return data_dir


@pytest.fixture
def mock_imagenet(imagenet_metadata):
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=16, data_dir=imagenet_metadata, policy=tfds.testing.MockPolicy.USE_FILES):
    yield imagenet_metadata


def test_device_augment_variant_is_the_same_recipe_split():
  host, device = load('vit_b16'), load('vit_b16:device_augment')
  ops = lambda spec: [op for op in spec.split('|') if op]
  split = ops(device.data.pp_train)  # The crop and keep stay on the host; the rest moves, in the same order.
  assert len(split) == 2 and not host.data.pp_device
  assert [split[0], *ops(device.data.pp_device), split[-1]] == ops(host.data.pp_train)
  with pytest.raises(ValueError, match='device_augment'):
    load('vit_b16:gpu')


@pytest.mark.parametrize('name', CONFIGS + ARG_VARIANTS)
def test_config_trains_two_steps(name, request, tmp_path):
  from vision_models.training import evaluation, trainer
  config = load(name)
  if config.data.name == 'imagenet2012':
    config.data.pp_train = evaluation.pp_at_resolution(config.data.pp_train, config.data.image_size, SMOKE_RESOLUTION)
    config = evaluation.at_resolution(config, SMOKE_RESOLUTION)
    config.data.data_dir = request.getfixturevalue('mock_imagenet')
    config.model = shrink(dict(config.model))
    config.batch_size = 8
  elif config.data.name == 'sklearn_digits':
    config.data.data_dir = request.getfixturevalue('digits_dir')
  elif name in ELSEWHERE:
    with open(os.path.join(ROOT, 'tests', ELSEWHERE[name])) as f:
      assert f'{name}.get_config' in f.read(), f'tests/{ELSEWHERE[name]} no longer trains configs/{name}.py'
    return
  else:
    pytest.fail(f'configs/{name}.py trains on {config.data.name!r}: teach this test to mock it')
  if config.get('init_from'):  # Fine-tuning configs start fresh here; tests/test_graft.py covers init_from.
    config.init_from = None
  config.data.shuffle_buffer = 16
  config.total_steps = 2
  config.optimizer.warmup_steps = 1
  config.log_every = config.eval_every = config.checkpoint_every = 2
  if config.get('sample'):  # Diffusion: a handful of samples with few steps at evaluation.
    config.sample.update(num_samples=8, batch_size=8, respacing='2')
  results = trainer.train(config, str(tmp_path))
  assert results, f'configs/{name}.py: training returned no evaluation'
  assert os.path.isdir(tmp_path / 'checkpoints' / '2')


def unoverridable(config, prefix=''):
  """Dotted paths of the fields typed NoneType (a plain None): `--config.PATH=v` refuses to override them."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from unoverridable(value, f'{prefix}{key}.')
    elif config.get_type(key) is type(None):
      yield f'{prefix}{key}'


@pytest.mark.parametrize('name', CONFIGS + ARG_VARIANTS)
def test_every_field_can_be_overridden(name):
  fields = list(unoverridable(load(name)))
  assert not fields, f'configs/{name}.py: use config_dict.placeholder(type) instead of None for {fields}'


@pytest.mark.parametrize('name,path,value', [
    ('dit_xl2', 'data.data_dir', '/data/latents'),
    ('dit_xl2', 'sample.classifier_config', 'configs/quickstart.py'),
    ('dit_xl2', 'sample.classifier_workdir', 'workdirs/quickstart'),
    ('dit_digits', 'sample.guidance_channels', 1),
    ('convnext_t', 'optimizer.grad_clip', 1.0),
])
def test_unset_field_overrides_from_the_command_line(name, path, value):
  """The flag parsing train.py and eval.py use, on fields that default to None."""
  from absl import flags
  from ml_collections import config_flags
  argv = ['prog', f'--config={ROOT}/configs/{name}.py', f'--config.{path}={value}']
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=flag_values, lock_config=True, sys_argv=argv)
  flag_values(argv)
  section, field = path.split('.')
  assert flag_values.config[section][field] == value
  assert load(name)[section].get(field) is None  # Left unset, it reads as None, as the code expects.
