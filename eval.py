"""Evaluates a workdir's latest checkpoint: python eval.py --config=configs/X.py --workdir=DIR.

Prints top-1 / top-5 accuracy and loss on the eval split (and of the EMA weights when the run keeps them) and writes
them with per-class accuracy to DIR/eval.json.
  --resolution=R    evaluates at R px instead (position embeddings / relative position tables resampled, the eval
                    preprocessing rescaled) → DIR/eval_R.json.
  --checkpoint=OUT  evaluates an exported (`python -m vision_models.export`) or converted
                    (`python -m vision_models.convert.to_orbax`) model on the config's eval data
                    → DIR/eval_checkpoint.json.
For a diffusion config (`config.task = 'diffusion'`) it samples the EMA model instead: DIR/samples.npz,
DIR/samples.png, DIR/eval.json (with the accuracy of a classifier on the samples when
`config.sample.classifier_config` is set).
"""
from absl import app, flags

from vision_models import cli, host_memory

CONFIG, WORKDIR = cli.define_common_flags()
RESOLUTION = flags.DEFINE_integer('resolution', None, 'Evaluate at this image size (default: the config\'s).')
CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'An exported or converted model directory to evaluate.')


@cli.clean_errors
def main(argv):
  del argv
  cli.init_distributed()
  from vision_models.training import evaluation, trainer
  config = cli.config_or_exit(CONFIG)
  if CHECKPOINT.value:
    results = evaluation.evaluate_checkpoint(config, CHECKPOINT.value, WORKDIR.value, RESOLUTION.value)
  elif RESOLUTION.value is not None:
    results = evaluation.evaluate_workdir(config, WORKDIR.value, RESOLUTION.value)
  else:
    results = trainer.evaluate(config, WORKDIR.value)
  if 'eval/num_samples' in results:
    accuracy = results.get('eval/classifier_accuracy')
    scored = f', classifier accuracy on them {accuracy:.4f}' if accuracy is not None else ''
    print(f'step {results["step"]}: {results["eval/num_samples"]} samples{scored} → {WORKDIR.value}/samples.npz, '
          f'samples.png, eval.json')
    return
  what = f'{CHECKPOINT.value}' if CHECKPOINT.value else f'step {results["step"]}'
  at = f' at {results["resolution"]} px' if 'resolution' in results else ''
  print(f'{what}{at}: top-1 {results["eval/accuracy"]:.4f}, top-5 {results["eval/top5_accuracy"]:.4f}, '
        f'loss {results["eval/loss"]:.4f} on {results["eval/examples"]} examples → {WORKDIR.value}')
  if 'eval_ema/accuracy' in results:
    print(f'EMA weights: top-1 {results["eval_ema/accuracy"]:.4f}, top-5 {results["eval_ema/top5_accuracy"]:.4f}')


if __name__ == '__main__':
  # Before any thread starts: parsing the flags loads the config, which may import numpy and JAX.
  host_memory.reuse_freed_memory()
  app.run(main, flags_parser=cli.parse_flags)
