"""The zoo's configs (ImageNet-1k recipes and digits quickstarts): they load, name a registered model with valid
fields, and their preprocessing strings parse."""
import importlib.util
import os

import pytest

from vision_models import models
from vision_models.data import preprocess

CONFIGS = ('convnext_t', 'convnextv2_t', 'mixer_b16', 'deit_s16', 'convnext_digits', 'mixer_digits')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds_its_model_and_pipeline(name):
  config = load(name)
  model = models.create(config.model.name, num_classes=10, **{k: v for k, v in config.model.items() if k != 'name'})
  assert config.data.image_size % getattr(model, 'patch_size', 1) == 0
  preprocess.parse(config.data.pp_train)
  preprocess.parse(config.data.pp_eval)
  assert 0 < config.optimizer.warmup_steps < config.total_steps
  assert config.eval_every <= config.total_steps
