"""End to end on 8 CPU devices: a short run learns, writes metrics, TensorBoard events and checkpoints, resumes,
and eval restores the latest checkpoint."""
import json
import os

import jax
import numpy as np
import pytest

from vision_models.errors import ConfigError
from vision_models.training import metrics as metrics_lib, trainer

pytestmark = pytest.mark.xdist_group('training')
BACKEND_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'  # jax._src.dispatch's name for an XLA compile


def test_short_run_on_8_devices_learns_checkpoints_and_resumes(tiny_config, tmp_path):
  assert jax.device_count() == 8
  workdir = str(tmp_path / 'run')
  tiny_config.peak_flops_per_device = 1e11  # The CPU has no peak in the table: MFU needs it from the config.
  results = trainer.train(tiny_config, workdir)
  records = metrics_lib.read(workdir)
  losses = [r['train/loss'] for r in records if 'train/loss' in r]
  assert len(losses) == 6 and losses[-1] < losses[0] * 0.9, losses
  assert {'train/learning_rate', 'train/accuracy', 'perf/examples_per_sec', 'perf/mfu'} <= set(records[0])
  assert records[0]['perf/model_flops_per_step'] > 1e6 and 0 < records[0]['perf/mfu'] < 1
  assert all(0 <= r['perf/input_wait_fraction'] <= 1 for r in records if 'train/loss' in r)
  # The first window starts after the compilation, so it is not much slower than the rest.
  step_seconds = [r['perf/step_seconds'] for r in records if 'perf/step_seconds' in r]
  assert step_seconds[0] < 3 * np.median(step_seconds[1:]), step_seconds
  assert results['eval/examples'] == 360 and results['eval/accuracy'] > 0.25, results  # chance is 0.1
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['15', '30']
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(os.path.join(workdir, 'tensorboard')))

  tiny_config.total_steps = 40  # Same command, longer schedule: resumes from step 30.
  trainer.train(tiny_config, workdir)
  steps = [r['step'] for r in metrics_lib.read(workdir) if 'train/loss' in r]
  assert steps[-2:] == [35, 40]
  assert '40' in os.listdir(os.path.join(workdir, 'checkpoints'))

  evaluated = trainer.evaluate(tiny_config, workdir)
  with open(os.path.join(workdir, 'eval.json')) as f:
    written = json.load(f)
  assert written['step'] == 40 and written['eval/accuracy'] == evaluated['eval/accuracy']
  assert 0.0 <= written['eval/accuracy'] <= written['eval/top5_accuracy'] <= 1.0
  assert len(written['eval/per_class_accuracy']) == 10


def test_model_flops_count_every_micro_batch(tiny_config, tmp_path):
  """XLA's cost analysis counts a loop body once; the figure logged for accumulated micro-batches is the whole
  batch's. Windows with an evaluation in them time the training steps after it only."""
  tiny_config.update(total_steps=16, log_every=4, eval_every=7, checkpoint_every=100)
  flops = {}
  for accum in (1, 4):
    tiny_config.grad_accum_steps = accum
    trainer.train(tiny_config, str(tmp_path / str(accum)))
    seconds = {r['step']: r for r in metrics_lib.read(str(tmp_path / str(accum))) if 'perf/step_seconds' in r}
    flops[accum] = seconds[4]['perf/model_flops_per_step']
    # Step 8's window held step 7's evaluation: it times step 8 alone, not four steps over step 8's time.
    steady = np.mean([seconds[step]['perf/step_seconds'] for step in (12, 16)])
    assert seconds[8]['perf/step_seconds'] > 0.6 * steady, seconds
  assert flops[4] == pytest.approx(flops[1], rel=0.02), flops


def test_eval_without_checkpoint_is_a_clear_error(tiny_config, tmp_path):
  with pytest.raises(ConfigError, match='no checkpoint'):
    trainer.evaluate(tiny_config, str(tmp_path))


@pytest.mark.parametrize('field,value,match', [
    ('batch_size', 12, 'batch_size=12 is not divisible by the data-parallel size 8'),
    ('model.name', 'vit_nope', "unknown model 'vit_nope'"),
    ('data.name', 'no_such_dataset_xyz', "unknown dataset 'no_such_dataset_xyz'"),
    ('data.image_size', 18, 'image_size=18 is not divisible by the patch size 4'),
    ('mesh.fsdp', 16, 'needs 16 devices'),
    ('sharding_rules', (('embed', 'model'),), r"sharding rule \('embed', 'model'\) names mesh axis 'model'"),
    ('data.eval_split', 'validation', r"has no split 'validation' \(config.data.eval_split\)"),
    ('data.train_split', 'train[:200%]', r"has no split 'train\[:200%\]' \(config.data.train_split\)"),
    ('model.attn_impl', 'magic', "unknown attention impl 'magic'"),
])
def test_bad_config_fails_before_compiling(tiny_config, tmp_path, field, value, match):
  section, _, key = field.rpartition('.')
  (tiny_config[section] if section else tiny_config)[key] = value
  compiled = []
  record = lambda event, seconds, **_: compiled.append(event) if event == BACKEND_COMPILE_EVENT else None  # noqa: E731
  jax.monitoring.register_event_duration_secs_listener(record)
  try:
    with pytest.raises(ConfigError, match=match):
      trainer.train(tiny_config, str(tmp_path))
  finally:
    jax.monitoring.unregister_event_duration_listener(record)
  assert not compiled


def test_unwritable_workdir_is_a_clear_error(tiny_config, tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  with pytest.raises(ConfigError, match='not writable'):
    trainer.train(tiny_config, str(blocker / 'sub'))


def test_mixup_and_weight_ema_train_and_evaluate(tiny_config, tmp_path):
  tiny_config.total_steps = 5
  tiny_config.eval_every = 5
  tiny_config.mixup = dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)
  tiny_config.optimizer.ema_decay = 0.9
  results = trainer.train(tiny_config, str(tmp_path))
  assert 0 <= results['eval_ema/accuracy'] <= 1 and results['eval_ema/examples'] == 360
  assert results['eval_ema/loss'] != results['eval/loss']  # The EMA lags the weights.
  for record in metrics_lib.read(str(tmp_path)):
    assert all(np.isfinite(v) for v in record.values() if isinstance(v, float))
