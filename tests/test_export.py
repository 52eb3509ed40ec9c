"""Export round trip: train the tiny quickstart, export it (float32 and bfloat16), load it back with
`vision_models.load_exported`, compare logits with the trained parameters, classify PNG files with `predict`; the
converted-model layout (no config.json); bad input → ConfigError / exit code 2."""
import importlib.util
import json
import os
import subprocess
import sys
from typing import NamedTuple

import flax.linen as nn
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from PIL import Image

import vision_models
from vision_models import export, models, predict
from vision_models.data.images import load_images
from vision_models.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def trained_params(config, workdir):
  """The model and `{'params', **model_state}` of the workdir's latest checkpoint, as the trainer left them."""
  from vision_models.training import setup as setup_lib, state as state_lib
  from vision_models.training.checkpoint import Checkpointer
  s = setup_lib.build(config)
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'))
  step, state = ckpt.restore_latest_good(state_lib.abstract(s.model, s.tx, s.input_shape, s.state_shardings))
  ckpt.close()
  return s.model, step, jax.device_get({'params': state.params, **state.model_state})


def write_pngs(data_dir, directory, count=3):
  """The first test digits as 8×8 grayscale PNG files; returns their paths and labels."""
  import tensorflow_datasets as tfds
  paths, labels = [], []
  for i, ex in enumerate(tfds.as_numpy(tfds.load('sklearn_digits', split='test', data_dir=data_dir).take(count))):
    paths.append(str(directory / f'digit{i}.png'))
    labels.append(int(ex['label']))
    Image.fromarray(ex['image'][..., 0]).save(paths[-1])
  return paths, labels


def test_train_export_load_predict(tiny_config, tmp_path, capsys, monkeypatch):
  from vision_models.training import trainer
  config, workdir = tiny_config, str(tmp_path / 'run')
  config.total_steps, config.eval_every, config.checkpoint_every, config.log_every = 6, 6, 6, 3
  trainer.train(config, workdir)
  model, step, variables = trained_params(config, workdir)
  assert step == 6

  spec = export.export(config, workdir, str(tmp_path / 'f32'))
  assert spec['step'] == 6 and spec['ema'] is False and spec['dtype'] == 'float32'
  assert spec['param_count'] == models.param_count(variables['params'])
  module, exported, exported_config = vision_models.load_exported(str(tmp_path / 'f32'))
  assert exported_config.data.pp_eval == config.data.pp_eval and exported_config.model.width == 64
  assert set(exported) == {'params'}  # No optimizer state, no step.
  jax.tree.map(np.testing.assert_array_equal, exported, variables)

  paths, labels = write_pngs(config.data.data_dir, tmp_path)
  images = load_images(paths, config.data.pp_eval, channels=1)
  assert images.shape == (3, 16, 16, 1) and images.min() >= -1 and images.max() <= 1
  apply = jax.jit(lambda v, x: module.apply(v, x, train=False))
  expected = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))
  np.testing.assert_array_equal(np.asarray(apply(exported, images)), expected)  # float32: exact

  spec16 = export.export(config, workdir, str(tmp_path / 'bf16'), dtype='bfloat16')
  assert spec16['dtype'] == 'bfloat16'
  _, exported16, _ = vision_models.load_exported(str(tmp_path / 'bf16'))
  assert all(x.dtype == np.dtype('bfloat16') for x in jax.tree.leaves(exported16))
  np.testing.assert_allclose(np.asarray(apply(exported16, images)), expected, atol=0.05)

  # predict prints each file's top-5 with the dataset's class names, best first, the softmax of the logits.
  capsys.readouterr()
  assert predict.main(['--model', str(tmp_path / 'f32'), *paths]) == 0
  lines = capsys.readouterr().out.splitlines()
  probs = np.asarray(jax.nn.softmax(expected))
  for i, path in enumerate(paths):
    block = lines[i * 6:(i + 1) * 6]
    assert block[0] == path
    printed = [(line.split()[1], float(line.split()[2])) for line in block[1:]]
    top5 = np.argsort(-probs[i], kind='stable')[:5]
    assert [name for name, _ in printed] == [str(c) for c in top5]
    np.testing.assert_allclose([p for _, p in printed], probs[i, top5], atol=5e-5)

  # A train state that keeps an EMA of the weights exports the EMA.
  monkeypatch.setattr(export, 'ema_params', lambda state: jax.tree.map(lambda p: p * 0.5, state.params))
  assert export.export(config, workdir, str(tmp_path / 'ema'))['ema'] is True
  _, exported_ema, _ = vision_models.load_exported(str(tmp_path / 'ema'))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b * 0.5), exported_ema['params'], variables['params'])

  with pytest.raises(ConfigError, match='already holds'):
    export.export(config, workdir, str(tmp_path / 'f32'))


class EmaState(NamedTuple):
  ema_params: dict


def test_ema_params_found_in_the_state_or_the_optimizer_state():
  class State(NamedTuple):
    params: dict
    opt_state: object

  params = {'w': np.ones(3)}
  assert export.ema_params(State(params, optax.adam(1e-3).init(params))) is None
  ema = {'w': np.zeros(3)}
  assert export.ema_params(State(params, (optax.adam(1e-3).init(params), EmaState(ema)))) is ema

  class WithField(NamedTuple):
    params: dict
    opt_state: object
    ema_params: dict

  assert export.ema_params(WithField(params, (), ema)) is ema


def test_converted_layout_without_config(tmp_path):
  """What `convert.to_orbax` writes (numpy variables, model.json with list kwargs, no config.json) loads too."""
  module = models.create('vit', num_classes=3, patch_size=4, width=32, depth=1, num_heads=2, mlp_dim=64)
  images = np.random.RandomState(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  rs = np.random.RandomState(0)  # Noise in the variables' shapes: non-zero everywhere, cheaper than init.
  variables = jax.tree.map(lambda s: (0.2 * rs.normal(size=s.shape)).astype(np.float32),
                           nn.unbox(jax.eval_shape(module.init, jax.random.key(0), images)))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(str(tmp_path / 'variables'), variables)
  checkpointer.wait_until_finished()
  kwargs = {'num_classes': 3, 'patch_size': 4, 'width': 32, 'depth': 1, 'num_heads': 2, 'mlp_dim': 64}
  with open(tmp_path / 'model.json', 'w') as f:
    json.dump({'name': 'vit', 'kwargs': kwargs, 'image_size': 8}, f)
  loaded, restored, config = vision_models.load_exported(str(tmp_path))
  assert config is None and loaded == module
  np.testing.assert_array_equal(loaded.apply(restored, images), module.apply(variables, images))
  # Without a config, predict needs --pp.
  png = str(tmp_path / 'x.png')
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
  with pytest.raises(ConfigError, match='--pp'):
    predict.run(str(tmp_path), [png])
  [[top, _, _]] = predict.run(str(tmp_path), [png], top=3, pp_spec='decode(3)|value_range(-1, 1)')
  assert top[0] in '012'


def test_bad_input(tmp_path, tiny_config):
  with pytest.raises(ConfigError, match='dtype'):
    export.export(tiny_config, str(tmp_path), str(tmp_path / 'out'), dtype='float8')
  with pytest.raises(ConfigError, match='no checkpoint'):
    export.export(tiny_config, str(tmp_path / 'empty'), str(tmp_path / 'out'))
  os.makedirs(tmp_path / 'run' / 'checkpoints' / '1')
  blocker = tmp_path / 'file'
  blocker.write_text('')
  with pytest.raises(ConfigError, match='not writable'):
    export.export(tiny_config, str(tmp_path / 'run'), str(blocker / 'out'))
  with pytest.raises(ConfigError, match='not an exported model'):
    vision_models.load_exported(str(tmp_path))
  with pytest.raises(ConfigError, match='not found'):
    predict.run(str(tmp_path), [str(tmp_path / 'missing.png')])
  with pytest.raises(ConfigError, match='cannot read'):
    load_images([str(blocker)], 'decode(1)|resize(16)')
  # The command line: one line on stderr, exit code 2, no traceback.
  result = subprocess.run([sys.executable, '-m', 'vision_models.export', '--config', 'configs/quickstart.py',
                           '--workdir', str(tmp_path / 'empty'), '--out', str(tmp_path / 'out')],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().startswith('error: no checkpoint') and 'Traceback' not in result.stderr


def test_diffusion_export_uses_the_ema(digits_dir, tmp_path):
  """A DiT run (`config.task = 'diffusion'`) exports its EMA weights; the loaded module denoises as the trained one."""
  if importlib.util.find_spec('vision_models.models.dit') is None:
    pytest.skip('the DiT model is not in this checkout yet')
  from configs import dit_digits
  from vision_models.diffusion import train_step, trainer as diffusion_trainer
  from vision_models.training.checkpoint import Checkpointer
  config = dit_digits.get_config()
  config.data.data_dir = digits_dir
  config.model.update(hidden_size=32, depth=1, num_heads=2)
  config.batch_size, config.total_steps, config.log_every, config.checkpoint_every = 16, 2, 1, 2
  workdir = str(tmp_path / 'run')
  diffusion_trainer.train(config, workdir)
  spec = export.export(config, workdir, str(tmp_path / 'out'))
  assert spec['ema'] is True and spec['kwargs']['input_size'] == 8 and spec['kwargs']['in_channels'] == 1
  module, variables, _ = vision_models.load_exported(str(tmp_path / 'out'))
  s = diffusion_trainer.build(config)
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'))
  state = jax.device_get(ckpt.restore(train_step.abstract(s.model, s.tx, s.input_shape, s.state_shardings)))
  ckpt.close()
  jax.tree.map(np.testing.assert_array_equal, variables, {'params': state.ema_params, **state.model_state})
  x, t, y = np.ones((2, 8, 8, 1), np.float32), np.array([3.0, 500.0], np.float32), np.array([1, 7])
  np.testing.assert_array_equal(module.apply(variables, x, t, y), s.model.apply(
      {'params': state.ema_params, **state.model_state}, x, t, y))
