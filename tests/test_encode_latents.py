"""encode_latents end to end: a tiny TFDS image dataset and a tiny random diffusers VAE → a TFDS latents dataset whose
latents equal diffusers' PyTorch encoding of the ADM-cropped images."""
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip('torch')
diffusers = pytest.importorskip('diffusers')
tfds = pytest.importorskip('tensorflow_datasets')

from vision_models.diffusion import encode_latents  # noqa: E402
from vision_models.diffusion.vae import SCALE  # noqa: E402

SIZES = [(32, 32), (40, 48), (80, 70), (32, 40), (33, 32)]
STD = 1e-3  # Posterior std of the test VAE: small enough to compare with the mean, large enough to see the noise.


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('latents')
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]
  tfds.dataset_builders.store_as_tfds_dataset(
      name='tiny_images', version='1.0.0', data_dir=str(root / 'images'),
      features=tfds.features.FeaturesDict({'image': tfds.features.Image(shape=(None, None, 3)),
                                           'label': tfds.features.ClassLabel(num_classes=3)}),
      split_datasets={'train': [(i, {'image': x, 'label': i % 3}) for i, x in enumerate(images)]})
  torch.manual_seed(0)
  vae = diffusers.AutoencoderKL(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4,
                                down_block_types=('DownEncoderBlock2D',) * 4, up_block_types=('UpDecoderBlock2D',) * 4)
  with torch.no_grad():  # A fixed log-variance: latents = mean + STD * noise.
    vae.quant_conv.weight[4:] = 0
    vae.quant_conv.bias[4:] = 2 * np.log(STD)
  vae.eval().save_pretrained(root / 'vae', safe_serialization=True)
  return root, images, vae


def test_writes_latents_of_adm_crops_and_mirrors(setup):
  root, images, vae = setup
  encode_latents.main(['--dataset', 'tiny_images', '--split', 'train', '--data_dir', str(root / 'images'),
                       '--vae', str(root / 'vae' / 'diffusion_pytorch_model.safetensors'), '--image_size', '32',
                       '--out', str(root / 'out'), '--flip', '--batch_size', '4'])
  from vision_models.data import pipeline
  builder = pipeline.builder('tiny_images_latents32', str(root / 'out'))  # How training finds it.
  assert builder.info.splits['train'].num_examples == 2 * len(images)
  assert builder.info.features['label'].num_classes == 3
  stored = sorted(tfds.as_numpy(builder.as_dataset(split='train')), key=lambda e: e['latent'].sum())
  assert stored[0]['latent'].shape == (4, 4, 4) and stored[0]['latent'].dtype == np.float32

  # ADM's crop written out for the 40x48 image: bicubic to 38x32 (w x h), then columns 3..35.
  crop = np.asarray(Image.fromarray(images[1]).resize((38, 32), Image.BICUBIC))[:, 3:35]
  np.testing.assert_array_equal(encode_latents.center_crop(images[1], 32), crop)
  # 80x70: box-halved to 40x35 first.
  halved = Image.fromarray(images[2]).resize((35, 40), Image.BOX).resize((32, 37), Image.BICUBIC)
  np.testing.assert_array_equal(encode_latents.center_crop(images[2], 32), np.asarray(halved)[2:34])

  crops = np.stack([encode_latents.center_crop(x, 32) for x in images])
  crops = np.concatenate([crops, crops[:, :, ::-1]])
  with torch.no_grad():
    mean = vae.encode(torch.from_numpy(crops.transpose(0, 3, 1, 2) / 127.5 - 1).float()).latent_dist.mean
  want = SCALE * mean.numpy().transpose(0, 2, 3, 1)
  labels = np.concatenate([np.arange(len(images)) % 3] * 2)
  got = np.stack([e['latent'] for e in stored])
  # Match each stored example to its image (the order of a TFDS dataset is shuffled on write).
  match = [int(np.argmin(np.abs(want - g).max(axis=(1, 2, 3)))) for g in got]
  assert sorted(match) == list(range(2 * len(images)))
  assert [int(e['label']) for e in stored] == [labels[m] for m in match]
  noise = (got - want[match]) / SCALE
  assert np.abs(noise).max() < 6 * STD  # The means agree far below the noise level.
  assert 0.8 * STD < noise.std() < 1.2 * STD  # A posterior sample, not the mean.


def test_bad_input_exits_2(setup, capsys):
  root, _, _ = setup
  args = ['--dataset', 'tiny_images', '--data_dir', str(root / 'images'), '--out', str(root / 'bad')]
  vae = str(root / 'vae' / 'diffusion_pytorch_model.safetensors')
  for extra, message in [(['--vae', vae, '--image_size', '36'], 'multiple of 8'),
                         (['--vae', str(root / 'none.safetensors')], 'VAE weights'),
                         (['--vae', vae, '--split', 'test'], 'no split')]:
    with pytest.raises(SystemExit) as exit_info:
      encode_latents.main(args + extra)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
