"""benchmarks/operator_study.py: two mixers, a few steps each on the digits, and the files it writes."""
import json
import os
import subprocess
import sys

from benchmarks import operator_study


def test_study_trains_each_mixer_and_writes_table_json_and_plot(tiny_config, tmp_path):
  tiny_config.checkpoint_every = 100
  rows = operator_study.run_study(tiny_config, ['attention', 'pooling'], str(tmp_path), steps=3)
  assert [r['mixer'] for r in rows] == ['attention', 'pooling']
  attention, pooling = rows
  # Pooling has no parameters: the difference is exactly attention's q/k/v/out kernels and biases (width 64).
  assert attention['params'] - pooling['params'] == 4 * 64 * 64 + 4 * 64
  assert attention['forward_flops'] > pooling['forward_flops'] > 0
  for row in rows:
    assert 0 <= row['accuracy'] <= 1 and row['steps'] == 3
    assert row['train_examples_per_sec'] > 0 and row['infer_examples_per_sec'] > 0
    assert os.path.isdir(tmp_path / row['mixer'] / 'checkpoints')
  study = json.loads((tmp_path / 'study.json').read_text())
  assert study['rows'] == json.loads(json.dumps(rows)) and study['dataset'] == 'sklearn_digits'
  table = (tmp_path / 'study.md').read_text().splitlines()
  assert table[0].startswith('| mixer | top-1 |') and len(table) == 4 and table[3].startswith('| pooling |')
  assert (tmp_path / 'study.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_unknown_mixer_exits_2_with_one_line(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'benchmarks.operator_study', '--config=configs/quickstart.py',
                           '--mixers=attention,mamba', f'--workdir={tmp_path}'], capture_output=True, text=True)
  assert result.returncode == 2 and "unknown token mixer 'mamba'" in result.stderr
  assert 'Traceback' not in result.stderr
