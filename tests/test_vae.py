"""The Flax SD-VAE against diffusers' PyTorch AutoencoderKL with random weights, and its converter's bookkeeping."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from vision_models.errors import ConfigError

torch = pytest.importorskip('torch')
diffusers = pytest.importorskip('diffusers')

TINY = dict(block_out_channels=(32, 64), layers_per_block=2, latent_channels=4, norm_num_groups=16)


def tiny_torch_vae(seed: int = 0):
  torch.manual_seed(seed)
  vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=('DownEncoderBlock2D',) * 2,
                                up_block_types=('UpDecoderBlock2D',) * 2, sample_size=32, **TINY).eval()
  with torch.no_grad():  # GroupNorm starts at (1, 0): perturb every tensor so a swapped scale/bias would show.
    for p in vae.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return vae


@pytest.fixture(scope='module')
def converted():
  from vision_models.convert.vae import from_diffusers_vae
  vae = tiny_torch_vae()
  module, variables = from_diffusers_vae(vae.state_dict(), norm_num_groups=16)
  return vae, module, variables


def test_encoder_and_decoder_match_diffusers(converted):
  vae, module, variables = converted
  x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    dist = vae.encode(torch.from_numpy(x.transpose(0, 3, 1, 2))).latent_dist
    z = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 4, 16, 16)).astype(np.float32))
    want_x = vae.decode(z).sample.numpy().transpose(0, 2, 3, 1)
  mean, logvar = module.apply(variables, x, method=module.encode)
  got_x = module.apply(variables, z.numpy().transpose(0, 2, 3, 1), method=module.decode)
  assert mean.shape == (2, 16, 16, 4)
  np.testing.assert_allclose(mean, dist.mean.numpy().transpose(0, 2, 3, 1), atol=1e-4, rtol=0)
  np.testing.assert_allclose(logvar, dist.logvar.numpy().transpose(0, 2, 3, 1), atol=1e-4, rtol=0)
  np.testing.assert_allclose(got_x, want_x, atol=1e-4, rtol=0)
  assert np.abs(want_x).max() > 0.1  # The comparison is not between two near-zero outputs.


def test_old_attention_names_convert_the_same(converted):
  from vision_models.convert.vae import from_diffusers_vae
  vae, _, variables = converted
  renames = {'to_q': 'query', 'to_k': 'key', 'to_v': 'value', 'to_out.0': 'proj_attn'}
  old = {}
  for k, v in vae.state_dict().items():
    for new, was in renames.items():
      k = k.replace(f'attentions.0.{new}.', f'attentions.0.{was}.')
    old[k] = v
  assert any('proj_attn' in k for k in old)
  _, old_variables = from_diffusers_vae(old, norm_num_groups=16)
  jax.tree.map(np.testing.assert_array_equal, old_variables, variables)


def test_sampling_and_scale():
  from vision_models.diffusion.vae import SCALE, sample
  mean = np.full((4096,), 2.0, np.float32)
  z = sample(jax.random.key(0), mean, np.full_like(mean, np.log(0.25)))
  assert SCALE == 0.18215
  np.testing.assert_allclose([z.mean(), z.std()], [2.0, 0.5], atol=0.03)


def test_sd_vae_parameter_count_equals_diffusers():
  from vision_models.diffusion.vae import AutoencoderKL
  from vision_models.models import param_count
  module = AutoencoderKL()
  shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), np.zeros((1, 8, 8, 3)))))
  # diffusers AutoencoderKL with the sd-vae-ft-mse config.json; counted from its state dict without building it.
  with torch.device('meta'):
    sd_vae = diffusers.AutoencoderKL(down_block_types=('DownEncoderBlock2D',) * 4,
                                     up_block_types=('UpDecoderBlock2D',) * 4,
                                     block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=256)
  want = sum(p.numel() for p in sd_vae.parameters())
  assert param_count(shapes['params']) == want == 83_653_863


def test_converter_rejects_a_missing_or_extra_tensor(converted):
  from vision_models.convert.vae import from_diffusers_vae
  sd = dict(converted[0].state_dict())
  with pytest.raises(ConfigError, match='missing'):
    from_diffusers_vae({k: v for k, v in sd.items() if k != 'decoder.conv_out.bias'}, norm_num_groups=16)
  with pytest.raises(ConfigError, match='unexpected'):
    from_diffusers_vae({**sd, 'decoder.extra.weight': sd['decoder.conv_out.bias']}, norm_num_groups=16)
