"""Trains a model: python train.py --config=configs/quickstart.py --workdir=DIR [--config.field=value ...].

Running the same command again resumes from DIR's latest checkpoint.
"""
from absl import app

from vision_models import cli, host_memory

CONFIG, WORKDIR = cli.define_common_flags()


@cli.clean_errors
def main(argv):
  del argv
  cli.init_distributed()
  from vision_models.training import trainer
  config = cli.config_or_exit(CONFIG)
  results = trainer.train(config, WORKDIR.value)
  if 'eval/accuracy' in results:
    print(f'Final eval: accuracy {results["eval/accuracy"]:.4f}, top-5 {results["eval/top5_accuracy"]:.4f}, '
          f'loss {results["eval/loss"]:.4f}')
  elif 'train/loss' in results:  # Diffusion: no eval during training; eval.py samples.
    print(f'Final train loss {results["train/loss"]:.4f}')


if __name__ == '__main__':
  # Before any thread starts: parsing the flags loads the config, which may import numpy and JAX.
  host_memory.reuse_freed_memory()
  app.run(main, flags_parser=cli.parse_flags)
