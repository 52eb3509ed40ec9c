"""Operator study: trains one backbone once per token mixer and tabulates accuracy, size, FLOPs and throughput.

  python -m benchmarks.operator_study --config=configs/quickstart.py --mixers=attention,pooling,dwconv,hyena2d \
      --workdir=DIR [--steps N] [--config.field=value ...]

Each mixer trains in `DIR/<mixer>` with the canonical trainer (`config.model.mixer` set to it; any family built on
`models/mixers.py`: ViT, DiT, ConvNeXt), so a second run resumes or reuses finished runs. Writes `DIR/study.json`
(one row per mixer), `DIR/study.md` (a markdown table) and `DIR/study.png` (one bar panel per figure).

Figures: eval top-1 accuracy; parameters; forward FLOPs per image (XLA's cost analysis of the jitted forward at
batch 1); training examples/s (the trainer's median `perf/examples_per_sec`, leaving out the first logged interval,
which holds the compilation, when there are several) and inference examples/s (timed jitted forward passes at the
config's batch size).
"""
import json
import os
import statistics
import time
from typing import Any, Sequence

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_models import cli
from vision_models.errors import ConfigError

COLUMNS = (('mixer', 'mixer', '{}'), ('accuracy', 'top-1', '{:.4f}'), ('params', 'params', '{:,}'),
           ('forward_flops', 'GFLOPs/image', '{:.4g}'), ('train_examples_per_sec', 'train ex/s', '{:.1f}'),
           ('infer_examples_per_sec', 'infer ex/s', '{:.1f}'))


def mixer_config(config: Any, mixer: str, steps: int | None) -> Any:
  """`config` with `model.mixer = mixer` (and `steps` training steps)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.model.mixer = mixer
    if steps:
      c.total_steps = steps
      c.eval_every, c.log_every = min(c.eval_every, steps), min(c.log_every, steps)
  return c


def measure(config: Any, timing_runs: int = 3) -> dict[str, Any]:
  """Parameters, forward FLOPs per image and inference throughput of `config`'s model (fresh weights)."""
  from vision_models.models import param_count
  from vision_models.training import perf, setup as setup_lib
  s = setup_lib.build(config)
  model, shape = s.model, s.input_shape
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *shape)))
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  flops = perf.step_flops(forward, variables, jax.ShapeDtypeStruct((1, *shape), jnp.float32))
  images = jnp.zeros((config.batch_size, *shape))
  jax.block_until_ready(forward(variables, images))
  times = []
  for _ in range(timing_runs):
    start = time.perf_counter()
    jax.block_until_ready(forward(variables, images))
    times.append(time.perf_counter() - start)
  return {'params': param_count(nn.unbox(variables['params'])), 'forward_flops': flops / 1e9 if flops else None,
          'infer_examples_per_sec': config.batch_size / statistics.median(times)}


def train_throughput(workdir: str) -> float | None:
  from vision_models.training import metrics
  rates = [r['perf/examples_per_sec'] for r in metrics.read(workdir) if 'perf/examples_per_sec' in r]
  return statistics.median(rates[1:] if len(rates) > 1 else rates) if rates else None


def run_study(config: Any, mixers: Sequence[str], workdir: str, steps: int | None = None) -> list[dict[str, Any]]:
  """Trains `config` once per mixer under `workdir/<mixer>`; returns the rows and writes study.{json,md,png}."""
  from vision_models.models import mixers as registry
  from vision_models.training import trainer
  if not mixers:
    raise ConfigError('--mixers is empty; name at least one token mixer')
  for name in mixers:
    if name not in registry.TOKEN_MIXERS:
      raise ConfigError(f'unknown token mixer {name!r} in --mixers; choose from {", ".join(registry.TOKEN_MIXERS)}')
  rows = []
  for name in mixers:
    c = mixer_config(config, name, steps)
    run_dir = os.path.join(workdir, name)
    results = trainer.train(c, run_dir)
    if 'eval/accuracy' not in results:  # Already trained to the end: read the final evaluation back.
      results = trainer.evaluate(c, run_dir)
    rows.append({'mixer': name, 'accuracy': results['eval/accuracy'], 'eval_loss': results['eval/loss'],
                 'steps': c.total_steps, **measure(c), 'train_examples_per_sec': train_throughput(run_dir)})
  with open(os.path.join(workdir, 'study.json'), 'w') as f:
    json.dump({'model': config.model.to_dict(), 'dataset': config.data.name, 'rows': rows}, f, indent=1)
  with open(os.path.join(workdir, 'study.md'), 'w') as f:
    f.write(markdown_table(rows))
  plot(rows, os.path.join(workdir, 'study.png'))
  return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
  cell = lambda fmt, v: 'n/a' if v is None else fmt.format(v)  # noqa: E731
  lines = ['| ' + ' | '.join(title for _, title, _ in COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
  lines += ['| ' + ' | '.join(cell(fmt, row[key]) for key, _, fmt in COLUMNS) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


def plot(rows: Sequence[dict[str, Any]], out_png: str) -> str:
  """One bar panel per figure, mixers on the x axis (1600x400 pixels)."""
  from vision_models import plots
  plt = plots._pyplot()
  panels = COLUMNS[1:]
  fig, axes = plt.subplots(1, len(panels), figsize=(16.0, 4.0), dpi=plots.DPI)
  names = [row['mixer'] for row in rows]
  for ax, (key, title, _) in zip(axes, panels):
    ax.bar(names, [row[key] or 0 for row in rows], color='tab:blue')
    ax.set_title(title)
    ax.tick_params(axis='x', rotation=45)
    ax.grid(alpha=0.3, axis='y')
  fig.tight_layout()
  return plots._save(fig, out_png)


def define_flags() -> dict[str, Any]:
  """The command line's flags (defined only when run as a script, so importing this module defines none)."""
  config, workdir = cli.define_common_flags()
  return dict(config=config, workdir=workdir,
              mixers=flags.DEFINE_list('mixers', None, 'Token mixers to compare, e.g. attention,pooling,dwconv.',
                                       required=True),
              steps=flags.DEFINE_integer('steps', None, 'Training steps per mixer (default: config.total_steps).'))


def main(flag: dict[str, Any]):
  @cli.clean_errors
  def run(argv):
    del argv
    workdir = flag['workdir'].value
    rows = run_study(cli.config_or_exit(flag['config']), flag['mixers'].value, workdir, flag['steps'].value)
    print(markdown_table(rows))
    print(f'Study: {os.path.join(workdir, "study.md")}, {os.path.join(workdir, "study.png")}')
  app.run(run, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  main(define_flags())
