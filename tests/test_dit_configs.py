"""The derived DiT digits configs run end to end, shrunk: rectified flow (train, sample with Heun and guidance) and
grafting from a trained dit_digits run (`config.init_from`)."""
import json
import os

import numpy as np
import pytest

from configs import dit_digits, dit_digits_flow, dit_digits_graft
from vision_models.errors import ConfigError
from vision_models.training import metrics as metrics_lib, trainer


def shrink(c, digits_dir):
  c.data.data_dir = digits_dir
  c.data.shuffle_buffer = 100
  c.model.update(hidden_size=16, depth=2, num_heads=2, patch_size=4)
  c.batch_size, c.total_steps, c.log_every, c.checkpoint_every = 16, 3, 1, 3
  c.sample.update(num_samples=16, batch_size=16, classifier_config=None)
  return c


def test_dit_digits_flow_trains_and_samples(digits_dir, tmp_path):
  config = shrink(dit_digits_flow.get_config(), digits_dir)
  config.model.adaln_lora_rank = 2
  config.sample.num_steps = 2
  assert config.diffusion.objective == 'rectified_flow' and config.sample.method == 'heun'
  results = trainer.train(config, str(tmp_path))
  assert np.isfinite(results['train/loss']) and 'train/vb' not in results
  assert [r['step'] for r in metrics_lib.read(str(tmp_path))] == [1, 2, 3]
  assert trainer.evaluate(config, str(tmp_path))['step'] == 3
  samples = np.load(os.path.join(tmp_path, 'samples.npz'))
  assert samples['images'].shape == (16, 8, 8, 1) and samples['images'].dtype == np.uint8
  assert json.load(open(os.path.join(tmp_path, 'eval.json')))['eval/num_samples'] == 16


def test_dit_digits_graft_starts_from_a_trained_dit_digits_run(digits_dir, tmp_path, capsys):
  source = shrink(dit_digits.get_config(), digits_dir)
  source.total_steps = source.checkpoint_every = 2
  trainer.train(source, str(tmp_path / 'source'))
  config = shrink(dit_digits_graft.get_config(), digits_dir)
  config.model.mixer_overrides = {'1': 'hyena2d'}  # The config's blocks 2-3 do not exist in the 2-block model.
  config.init_from = dict(config.init_from, workdir=str(tmp_path / 'source'), config=source, distill_steps=3)
  config.total_steps = 2
  results = trainer.train(config, str(tmp_path / 'graft'))
  report = capsys.readouterr().out
  assert 'replaced: params/blocks_1/mixer/query_kernel' in report and 'created: params/blocks_1/mixer/' in report
  assert 'blocks_0' not in report and 'distillation: block-output MSE' in report
  assert np.isfinite(results['train/loss'])
  config.init_from.graft = False
  with pytest.raises(ConfigError, match='init_from.graft=True'):
    trainer.train(config, str(tmp_path / 'strict'))
