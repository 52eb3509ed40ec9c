"""The diffusion train step on the 8-device CPU mesh (EMA, determinism, shardings) and the task switch of the trainer
end to end: train, resume, sample to samples.npz / samples.png / eval.json; bad sample settings fail at build."""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from vision_models.diffusion import trainer as diffusion_trainer
from vision_models.errors import ConfigError
from vision_models.training import steps, trainer

def digits_config(workdir):
  c = ml_collections.ConfigDict()
  c.task = 'diffusion'
  c.seed = 0
  c.model = dict(name='dit', patch_size=4, hidden_size=16, depth=1, num_heads=2)
  c.data = dict(name='sklearn_digits', data_dir=os.path.join(workdir, 'data'), train_split='train', image_size=8,
                channels=1, shuffle_buffer=100, pp_train='decode(1)|value_range(-1, 1)|keep("image", "label")')
  c.diffusion = dict(num_timesteps=1000)
  c.batch_size = 8
  c.total_steps = 2
  c.optimizer = dict(name='adamw', learning_rate=1e-3, weight_decay=0.0, warmup_steps=0, schedule='constant')
  c.ema_decay = 0.99
  c.sample = dict(num_samples=12, batch_size=8, respacing='4', method='ddim', cfg_scale=2.0, seed=0)
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.log_every = 1
  c.checkpoint_every = 1
  c.keep_checkpoints = 2
  return c


def test_train_step_updates_params_and_ema(tmp_path, digits_dir):
  """The step the training loop builds (`training.trainer.run`): the shared step with `DiffusionTask.loss_fn`."""
  config = digits_config(str(tmp_path))
  config.data.data_dir = digits_dir
  config.ema_decay = 0.9
  task = diffusion_trainer.DiffusionTask(config, str(tmp_path))
  s = task.s
  assert s.state_shardings.ema_params == s.state_shardings.params
  rng = np.random.default_rng(0)
  batch = {'image': rng.uniform(-1, 1, (16, *s.input_shape)).astype(np.float32),
           'label': np.arange(16, dtype=np.int32) % 10}
  step = steps.make_train_step(task.loss_fn(), s.tx, s.lr_schedule, s.mesh, s.state_shardings,
                               ema_decay=task.ema_decay)
  state = task.create_state(jax.random.key(0))
  initial = jax.device_get(state)  # The step donates its input state: keep a host copy.
  params0 = initial.params
  state, metrics = step(state, batch, jax.random.key(1))
  params1 = jax.device_get(state.params)
  assert int(state.step) == 1 and np.isfinite(metrics['train/loss'])
  np.testing.assert_allclose(float(metrics['train/loss']), float(metrics['train/mse'] + metrics['train/vb']),
                             rtol=1e-5)
  # The EMA starts at the initial weights and moves 10% of the way to the new ones.
  want = jax.tree.map(lambda a, b: 0.9 * a + 0.1 * b, params0, params1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), jax.device_get(state.ema_params),
               want)
  assert not np.allclose(params0['final_linear']['kernel'], params1['final_linear']['kernel'])
  # Timesteps, noise and label dropout are functions of (rng, step): a rerun is identical.
  _, metrics_again = step(jax.device_put(initial, s.state_shardings), batch, jax.random.key(1))
  assert float(metrics_again['train/loss']) == float(metrics['train/loss'])


@pytest.mark.slow
def test_train_resume_and_sample(tmp_path):
  workdir = str(tmp_path)
  config = digits_config(workdir)
  assert 'train/loss' in trainer.train(config, workdir)
  config.total_steps = 3
  trainer.train(config, workdir)  # Resumes at step 2.
  steps = [r['step'] for r in map(json.loads, open(os.path.join(workdir, 'metrics.jsonl')))]
  assert steps == [1, 2, 3]
  results = trainer.evaluate(config, workdir)
  assert results['step'] == 3 and results['eval/num_samples'] == 12
  samples = np.load(os.path.join(workdir, 'samples.npz'))
  assert samples['images'].shape == (12, 8, 8, 1) and samples['images'].dtype == np.uint8
  np.testing.assert_array_equal(samples['labels'], np.arange(12) % 10)
  assert os.path.getsize(os.path.join(workdir, 'samples.png')) > 0
  assert json.load(open(os.path.join(workdir, 'eval.json')))['step'] == 3


def test_unknown_task_is_a_config_error(tmp_path):
  config = digits_config(str(tmp_path))
  config.task = 'segmentation'
  with pytest.raises(ConfigError, match='config.task'):
    trainer.train(config, str(tmp_path))


@pytest.mark.parametrize('field,value,message', [
    ('respacing', 'abc', 'config.sample.respacing'),
    ('method', 'euler', 'config.sample.method'),
    ('batch_size', 3, 'config.sample.batch_size'),
    ('guidance_channels', 2, 'config.sample.guidance_channels'),
    ('classifier_config', 'configs/quickstart.py', 'config.sample.classifier_workdir'),
])
def test_bad_sample_config_fails_at_build(tmp_path, digits_dir, field, value, message):
  """Before the checkpoint is restored or anything compiles, so a bad eval setting fails in seconds."""
  config = digits_config(str(tmp_path))
  config.data.data_dir = digits_dir
  config.sample[field] = value
  with pytest.raises(ConfigError, match=message):
    diffusion_trainer.build(config)
