"""Evaluates the latest checkpoint of a workdir: python eval.py --config=configs/X.py --workdir=DIR.

Prints top-1 / top-5 accuracy and loss on the eval split and writes them to DIR/eval.json. For a diffusion config
(`config.task = 'diffusion'`) it samples the EMA model instead: DIR/samples.npz, DIR/samples.png, DIR/eval.json (with
the accuracy of a classifier on the samples when `config.sample.classifier_config` is set).
"""
from absl import app

from vision_models import cli

CONFIG, WORKDIR = cli.define_common_flags()


@cli.clean_errors
def main(argv):
  del argv
  cli.init_distributed()
  from vision_models.training import trainer
  results = trainer.evaluate(cli.config_or_exit(CONFIG), WORKDIR.value)
  if 'eval/num_samples' in results:
    accuracy = results.get('eval/classifier_accuracy')
    scored = f', classifier accuracy on them {accuracy:.4f}' if accuracy is not None else ''
    print(f'step {results["step"]}: {results["eval/num_samples"]} samples{scored} → {WORKDIR.value}/samples.npz, '
          f'samples.png, eval.json')
    return
  print(f'step {results["step"]}: top-1 {results["eval/accuracy"]:.4f}, top-5 {results["eval/top5_accuracy"]:.4f}, '
        f'loss {results["eval/loss"]:.4f} on {results["eval/examples"]} examples → {WORKDIR.value}/eval.json')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
