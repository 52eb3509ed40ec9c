"""The Flax FID Inception against pytorch-fid's PyTorch network (random weights, nothing downloaded), and the
metrics against direct computations."""
import numpy as np
import pytest

from vision_models.diffusion import fid
from vision_models.errors import ConfigError


@pytest.fixture(scope='module')
def torch_inception():
  """pytorch-fid's `InceptionV3([3])` with the FID blocks, its weight download stubbed out, then random weights.
  Returns the wrapper (pool features) and the inner torchvision Inception3, whose state dict has the published
  weights file's layout."""
  torch = pytest.importorskip('torch')
  inception = pytest.importorskip('pytorch_fid.inception')
  import torchvision
  inner = []
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(inception, 'load_state_dict_from_url', lambda *a, **k: {})
    mp.setattr(torchvision.models.inception.Inception3, 'load_state_dict', lambda self, sd, *a, **k: inner.append(self))
    net = inception.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
  torch.manual_seed(0)
  with torch.no_grad():
    for name, t in inner[0].state_dict().items():
      if name.endswith('conv.weight') or name == 'fc.weight':
        t.normal_(0, (2 / np.prod(t.shape[1:])) ** 0.5)
      elif name.endswith(('bn.weight', 'running_var')):
        t.uniform_(0.5, 1.5)
      elif name.endswith(('bn.bias', 'running_mean', 'fc.bias')):
        t.normal_(0, 0.1)
  return net, inner[0]


def test_network_matches_pytorch_fid(torch_inception):
  import torch
  from vision_models.convert.inception import from_pytorch_fid
  net, inner = torch_inception
  state_dict = inner.state_dict()
  assert 'Mixed_7c.branch_pool.conv.weight' in state_dict and state_dict['fc.weight'].shape == (1008, 2048)
  module, variables = from_pytorch_fid(state_dict)
  images = np.random.default_rng(0).uniform(0, 1, (2, 64, 80, 3)).astype(np.float32)  # Upsampled to 299x299.
  with torch.no_grad():
    pool = net(torch.from_numpy(images.transpose(0, 3, 1, 2)))[0].flatten(1)
    logits = inner.fc(pool).numpy()
  got = fid.inception_outputs(module, variables, images, batch_size=2)
  np.testing.assert_allclose(got['pool'], pool.numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(got['logits_unbiased'] + state_dict['fc.bias'].numpy(), logits, atol=1e-4, rtol=1e-5)
  assert pool.numpy().std() > 0.1  # Features are not degenerate.


def test_converter_rejects_unknown_tensors(torch_inception):
  from vision_models.convert.inception import from_pytorch_fid
  state_dict = dict(torch_inception[1].state_dict())
  with pytest.raises(ConfigError, match='not used'):
    from_pytorch_fid({**state_dict, 'AuxLogits.fc.weight': state_dict['fc.weight']})
  with pytest.raises(ConfigError, match='missing'):
    from_pytorch_fid({k: v for k, v in state_dict.items() if k != 'Mixed_6a.branch3x3.bn.running_var'})


def test_frechet_distance_matches_scipy():
  from scipy import linalg
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(300, 64)), rng.normal(size=(300, 64)) @ rng.normal(size=(64, 64)) * 0.3 + 0.5
  (mu1, s1), (mu2, s2) = fid.compute_statistics(a), fid.compute_statistics(b)
  np.testing.assert_allclose(s1, np.cov(a.T))
  covmean = linalg.sqrtm(s1 @ s2).real
  want = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
  np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), want, rtol=1e-9)
  assert abs(fid.frechet_distance(mu1, s1, mu1, s1)) < 1e-9
  # Fewer samples than dimensions: singular covariances (no Cholesky) still agree.
  (mu3, s3), (mu4, s4) = fid.compute_statistics(a[:20]), fid.compute_statistics(b[:20])
  want = np.sum((mu3 - mu4) ** 2) + np.trace(s3 + s4 - 2 * linalg.sqrtm(s3 @ s4).real)
  np.testing.assert_allclose(fid.frechet_distance(mu3, s3, mu4, s4), want, rtol=1e-6)


def test_evaluate_reports_fid_against_reference():
  rng = np.random.default_rng(0)
  outputs = {'pool': rng.normal(size=(50, 16)), 'logits_unbiased': rng.normal(size=(50, 1008))}
  reference = fid.compute_statistics(rng.normal(size=(80, 16)) + 1.0)
  got = fid.evaluate(outputs, reference, splits=5)
  assert got['fid'] == fid.frechet_distance(*fid.compute_statistics(outputs['pool']), *reference) > 10
  assert got['inception_score'] == fid.inception_score(outputs['logits_unbiased'], 5)[0]
  assert 'fid' not in fid.evaluate(outputs)


def test_statistics_roundtrip(tmp_path):
  mu, sigma = fid.compute_statistics(np.random.default_rng(0).normal(size=(10, 4)))
  fid.save_statistics(tmp_path / 'ref.npz', mu, sigma)
  got_mu, got_sigma = fid.load_statistics(str(tmp_path / 'ref.npz'))
  np.testing.assert_array_equal(got_mu, mu)
  np.testing.assert_array_equal(got_sigma, sigma)
  np.savez(tmp_path / 'bad.npz', x=mu)
  with pytest.raises(ConfigError, match='mu/sigma'):
    fid.load_statistics(str(tmp_path / 'bad.npz'))


def test_inception_score_closed_forms():
  # Confident and spread evenly over k classes: IS = k. Always the same class: IS = 1.
  k = 8
  confident = np.full((80, 1008), -50.0)
  confident[np.arange(80), np.arange(80) % k] = 50.0
  np.testing.assert_allclose(fid.inception_score(confident, splits=2), (k, 0.0), atol=1e-9)
  np.testing.assert_allclose(fid.inception_score(np.zeros((40, 1008)) + np.arange(1008), splits=4), (1, 0), atol=1e-9)
  # Against the definition with an explicit softmax and KL, one split.
  logits = np.random.default_rng(0).normal(size=(50, 10)) * 3
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  want = np.exp(np.mean([np.sum(q * np.log(q / p.mean(0))) for q in p]))
  np.testing.assert_allclose(fid.inception_score(logits, splits=1)[0], want, rtol=1e-10)


def test_kid_is_the_unbiased_polynomial_mmd():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 5)) + 0.7

  def k(a, b):
    return (a @ b / 5 + 1) ** 3

  m = len(x)
  want = (sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
          - 2 * sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m ** 2)
  mean, std = fid.kernel_inception_distance(x, y, num_subsets=3, subset_size=100)  # Subsets = whole permuted sets.
  np.testing.assert_allclose([mean, std], [want, 0.0], atol=1e-10)
  same = rng.normal(size=(400, 5))
  assert abs(fid.kernel_inception_distance(same[:200], same[200:], num_subsets=20, subset_size=100)[0]) < 0.05 < want


def test_command_line_scores_images_and_writes_statistics(torch_inception, tmp_path, capsys, monkeypatch):
  import json
  import torch
  net, inner = torch_inception
  np.savez(tmp_path / 'inception.npz', **{k: v.numpy() for k, v in inner.state_dict().items()})
  # 75x75 (the smallest the network takes) without the resize to 299 keeps this fast; the resize is tested above.
  monkeypatch.setattr(net, 'resize_input', False)
  load = fid.load_inception
  monkeypatch.setattr(fid, 'load_inception', lambda path: load(path, resize=False))
  images = np.random.default_rng(1).integers(0, 256, (3, 75, 75, 3), dtype=np.uint8)
  np.savez(tmp_path / 'samples.npz', images=images, labels=np.zeros(3))
  with torch.no_grad():
    pool = net(torch.from_numpy(images.transpose(0, 3, 1, 2) / np.float32(255)))[0].flatten(1).numpy()
  fid.main(['--inception', str(tmp_path / 'inception.npz'), '--images', str(tmp_path / 'samples.npz'),
            '--save_statistics', str(tmp_path / 'own.npz'), '--batch_size', '2'])
  result = json.loads(capsys.readouterr().out)  # FID against --reference: test_evaluate_reports_fid_against_reference.
  assert result['num_images'] == 3 and result['inception_score'] >= 1.0
  np.testing.assert_allclose(fid.load_statistics(str(tmp_path / 'own.npz'))[0], pool.mean(0), atol=1e-4)
  with pytest.raises(SystemExit) as exit_info:
    fid.main(['--inception', str(tmp_path / 'missing.pth'), '--images', str(tmp_path / 'samples.npz')])
  assert exit_info.value.code == 2 and 'not found' in capsys.readouterr().err


def test_command_line_scores_grayscale_samples_as_rgb(tmp_path, capsys, monkeypatch):
  """dit_digits writes 1-channel samples: scored as their 3-channel copies (pytorch-fid's convert('RGB'))."""
  import json

  import jax
  module = fid.InceptionV3(resize=False)  # 75x75 inputs (the smallest the network takes) keep this fast.
  variables = module.init(jax.random.key(0), np.zeros((1, 75, 75, 3), np.float32))
  monkeypatch.setattr(fid, 'load_inception', lambda path: (module, variables))
  gray = np.random.default_rng(2).integers(0, 256, (3, 75, 75, 1), dtype=np.uint8)
  stats = []
  for name, images in (('gray', gray), ('rgb', gray.repeat(3, axis=-1))):
    np.savez(tmp_path / f'{name}.npz', images=images)
    fid.main(['--inception', 'stubbed', '--images', str(tmp_path / f'{name}.npz'), '--save_statistics',
              str(tmp_path / f'{name}_stats.npz'), '--batch_size', '3'])
    assert json.loads(capsys.readouterr().out)['num_images'] == 3
    stats.append(fid.load_statistics(str(tmp_path / f'{name}_stats.npz'))[0])
  np.testing.assert_array_equal(stats[0], stats[1])
  assert np.abs(stats[0]).max() > 0
  np.savez(tmp_path / 'rgba.npz', images=np.zeros((3, 75, 75, 4), np.uint8))
  with pytest.raises(SystemExit) as exit_info:
    fid.main(['--inception', 'stubbed', '--images', str(tmp_path / 'rgba.npz')])
  assert exit_info.value.code == 2 and '1 (grayscale) or 3 (RGB) channels' in capsys.readouterr().err


def test_pth_without_torch_names_the_install(tmp_path, monkeypatch):
  import sys
  (tmp_path / 'w.pth').write_bytes(b'')
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` raises ImportError.
  with pytest.raises(ConfigError, match='pip install torch'):
    fid.load_inception(str(tmp_path / 'w.pth'))
