"""The benchmark scripts run and print what their docstrings promise (a tiny case; the figures themselves are
measured by running the scripts, see benchmarks/RESULTS.md)."""
import json

import pytest

from benchmarks import attention, fused_kernels, input_pipeline, train_step
from vision_models.errors import ConfigError


def test_time_steps_interleaves_the_implementations():
  calls = []
  times = train_step.time_steps([lambda: calls.append('a'), lambda: calls.append('b')], steps=3, warmup=1)
  assert calls == ['a', 'b'] * 4
  assert [len(t) for t in times] == [3, 3] and all(s >= 0 for t in times for s in t)


def test_train_step_prints_one_json_line(capsys):
  assert train_step.main(['--model', 'vit_ti16', '--resolution', '32', '--steps', '2', '--warmup', '1']) == 0
  line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert line['impl'] == 'vision_models'
  assert line['params'] == 5_717_416 - 192 * (197 - 5)  # ViT-Ti/16 with 4 patches (at 32 px) instead of 196
  assert line['examples_per_sec'] > 0 and line['model_flops_per_step'] > 0


def test_train_step_against_timm_with_reference_products_and_a_bar(capsys):
  args = ['--model', 'vit_ti16', '--batch', '8', '--steps', '1', '--warmup', '0', '--against-timm',
          '--matmul-rate', '64']
  assert train_step.main(args + ['--min-ratio', '1e9']) == 1  # the bar can fail
  ours, timm, ratio = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[-3:]]
  assert (ours['impl'], timm['impl'], timm['model']) == ('vision_models', 'timm', 'vit_tiny_patch16_224')
  assert ratio['ours_over_timm'] == pytest.approx(ours['examples_per_sec'] / timm['examples_per_sec'])
  # ViT-Ti/16's multiply-adds per image: 12 blocks of qkv, q·k, weights·v, projection and MLP; patches and head.
  block = 197 * 192 * 3 * 192 + 2 * 197 * 197 * 192 + 197 * 192 * 192 + 2 * 197 * 192 * 768
  forward = 2 * (12 * block + 196 * 768 * 192 + 192 * 1000)
  # Backward: two products per forward one, as traced (the images' gradient included, which XLA then drops).
  assert ours['matmul_flops_per_step'] == pytest.approx(8 * 3 * forward, rel=1e-4)
  for side in (ours, timm):
    assert side['matmul_flops_per_sec'] > 0
    assert side['matmul_fraction'] == pytest.approx(
        ours['matmul_flops_per_step'] / side['step_seconds'] / side['matmul_flops_per_sec'])


def test_train_step_reports_peak_memory_with_and_without_remat(capsys):
  # 224 px: with 8 devices, each holding one image, smaller inputs leave the optimizer's buffers as the peak.
  args = ['--model', 'vit_ti16', '--resolution', '224', '--steps', '1', '--warmup', '0']
  assert train_step.main(args) == 0
  plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert train_step.main(args + ['--remat', 'dots_with_no_batch_dims_saveable']) == 0
  remat = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert remat['remat'] == 'dots_with_no_batch_dims_saveable' and 'peak_bytes_without_remat' not in plain
  assert remat['peak_bytes_without_remat'] == plain['peak_bytes'] > plain['temp_bytes'] > 0
  assert remat['peak_bytes'] < plain['peak_bytes'] and remat['temp_bytes'] < plain['temp_bytes']


def test_train_step_refuses_a_batch_the_devices_cannot_split(capsys):
  with pytest.raises(SystemExit):
    train_step.main(['--model', 'vit_ti16', '--batch', '3'])
  assert 'not divisible by the 8 devices' in capsys.readouterr().err


@pytest.mark.parametrize('flag,value,message', [('--model', 'nope', "unknown model 'nope'"),
                                                ('--attn-impl', 'flashy', "unknown attention impl 'flashy'")])
def test_train_step_bad_input_is_a_usage_error(capsys, flag, value, message):
  with pytest.raises(SystemExit) as exit_info:  # exit 2, told apart from a missed bar's 1
    train_step.main(['--model', 'vit_ti16', flag, value])
  assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_train_step_builds_the_named_channel_mixer(capsys):
  args = ['--model', 'vit_ti16', '--resolution', '32', '--steps', '1', '--warmup', '1']
  assert train_step.main(args + ['--mlp', 'mlp_tanh']) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])['mlp'] == 'mlp_tanh'
  with pytest.raises(ConfigError, match='no_such_mlp'):  # the name reaches the model
    train_step.main(args + ['--mlp', 'no_such_mlp'])


def test_train_step_times_the_augmenting_step(capsys):
  spec = 'randaugment(2, 9)|flip_lr|value_range(-1, 1)'
  assert train_step.main(['--model', 'vit_ti16', '--resolution', '32', '--steps', '2', '--warmup', '1',
                          '--pp-device', spec]) == 0
  plain, augmented, added = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[-3:]]
  assert plain['pp_device'] is None and augmented['pp_device'] == spec
  assert augmented['model_flops_per_step'] >= plain['model_flops_per_step']
  assert added['augment_seconds'] == augmented['step_seconds'] - plain['step_seconds']


def test_input_pipeline_measures_every_spec_and_can_fail(capsys, tmp_path):
  args = ['--images', '8', '--min-side', '40', '--max-side', '60', '--size', '32', '--batch', '4', '--batches', '2',
          '--data-dir', str(tmp_path)]
  assert input_pipeline.main(args + ['--pp', 'all']) == 0
  written, *lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  assert written['images'] == 8 and written['dataset_bytes'] > 0
  assert [line['pp'] for line in lines] == list(input_pipeline.specs(32))
  assert all(line['ok'] and not line['problems'] and line['images_per_sec_per_core'] > 0 for line in lines)
  assert input_pipeline.main(args + ['--pp', 'device', '--min-rate', '1e9']) == 1  # The dataset is reused.
  (line,) = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  assert not line['ok'] and line['images_per_sec'] < 1e9


def test_fused_kernels_checks_the_kernels_against_xla_and_can_fail(capsys, monkeypatch):
  assert fused_kernels.main([]) == 0  # on the CPU: values only, the kernels interpreted at small sizes
  summaries = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines() if 'summary' in line]
  assert [(s['op'], s['ok']) for s in summaries] == [('add_layer_norm', True), ('dgelu_matmul', True)]
  monkeypatch.setattr(fused_kernels.kernels, 'dgelu_matmul', lambda dy, w, pre, interpret: (pre, pre[0]))
  assert fused_kernels.main([]) == 1


def test_the_gpu_bars_fail_where_they_cannot_be_checked(capsys):
  """`--min-mfu` and `--max-ratio` (make gpu-steps, gpu-kernels) fail on the CPU, which has no peak and no cuDNN."""
  assert train_step.main(['--model', 'vit_ti16', '--resolution', '32', '--steps', '2', '--warmup', '1',
                          '--min-mfu', '0.5']) == 1
  assert attention.main(['--seqs', '64', '--repeats', '1']) == 0
  assert attention.main(['--seqs', '64', '--repeats', '1', '--max-ratio', '1.25']) == 1
  assert 'needs cuDNN' in capsys.readouterr().err
