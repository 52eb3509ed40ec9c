"""Latent diffusion end to end: a tiny TFDS image dataset encoded by a tiny random diffusers VAE (encode_latents), then
configs/dit_xl2.py (shrunk) trains 2 steps on the resulting `latent` feature through the shared trainer."""
import numpy as np
import pytest

torch = pytest.importorskip('torch')
diffusers = pytest.importorskip('diffusers')
tfds = pytest.importorskip('tensorflow_datasets')

from configs import dit_xl2  # noqa: E402
from vision_models.diffusion import encode_latents  # noqa: E402
from vision_models.errors import ConfigError  # noqa: E402
from vision_models.training import metrics as metrics_lib, trainer  # noqa: E402


@pytest.fixture(scope='module')
def latents_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('latents')
  rng = np.random.default_rng(0)
  tfds.dataset_builders.store_as_tfds_dataset(
      name='tiny_images', version='1.0.0', data_dir=str(root / 'images'),
      features=tfds.features.FeaturesDict({'image': tfds.features.Image(shape=(None, None, 3)),
                                           'label': tfds.features.ClassLabel(num_classes=3)}),
      split_datasets={'train': [(i, {'image': rng.integers(0, 256, (40, 36, 3), dtype=np.uint8), 'label': i % 3})
                                for i in range(6)]})
  torch.manual_seed(0)
  vae = diffusers.AutoencoderKL(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4,
                                down_block_types=('DownEncoderBlock2D',) * 4, up_block_types=('UpDecoderBlock2D',) * 4)
  vae.eval().save_pretrained(root / 'vae', safe_serialization=True)
  name = encode_latents.encode_dataset('tiny_images', ['train'], str(root / 'images'),
                                       str(root / 'vae' / 'diffusion_pytorch_model.safetensors'), 32, str(root / 'out'),
                                       flip=True, batch_size=4)
  assert name == 'tiny_images_latents32'
  return str(root / 'out')


def tiny_xl2(data_dir):
  c = dit_xl2.get_config()
  c.data.update(name='tiny_images_latents32', data_dir=data_dir, image_size=4, shuffle_buffer=16)
  c.model.update(name='dit', patch_size=2, hidden_size=16, depth=1, num_heads=2, attn_impl='xla')
  c.batch_size, c.total_steps, c.log_every, c.checkpoint_every = 8, 2, 1, 2
  return c


def test_dit_xl2_config_trains_on_encoded_latents(latents_dir, tmp_path):
  config = tiny_xl2(latents_dir)
  assert config.data.feature == 'latent' and config.data.channels == 4
  results = trainer.train(config, str(tmp_path))
  assert np.isfinite(results['train/loss']) and results['train/vb'] > 0  # The hybrid loss of learned sigma.
  assert [r['step'] for r in metrics_lib.read(str(tmp_path))] == [1, 2]


def test_missing_feature_is_a_config_error(latents_dir, tmp_path):
  config = tiny_xl2(latents_dir)
  config.data.feature = 'image'
  with pytest.raises(ConfigError, match="config.data.feature='image' is not in the preprocessed examples"):
    trainer.train(config, str(tmp_path))
