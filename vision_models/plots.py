"""Figures as PNG files (matplotlib, Agg backend): training curves from `metrics.jsonl`, diffusion sample grids and
ViT attention maps.

  python -m vision_models.plots curves --workdir DIR     → DIR/curves.png
  python -m vision_models.plots samples --workdir DIR    → DIR/samples_grid.png (from DIR/samples.npz)

Every figure has a fixed size in inches at `DPI`, so a PNG's pixel size follows from its layout (see each function).
"""
import argparse
import os
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vision_models.errors import ConfigError

DPI = 100
CURVES_SIZE = (15.0, 4.0)  # inches: 1500×400 pixels
CELL = 1.0  # inches per image in grids


def _pyplot():
  import matplotlib
  matplotlib.use('Agg')  # Files only: no display needed, the same on a server and in a notebook.
  import matplotlib.pyplot as plt
  return plt


def _save(fig, out_png: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  fig.savefig(out_png, dpi=DPI)  # No tight bbox: the size in pixels stays figsize × DPI.
  _pyplot().close(fig)
  return out_png


def training_curves(workdir: str, out_png: str) -> str:
  """Loss, accuracy and learning rate against the step, train and eval, from `workdir/metrics.jsonl`.
  A panel with nothing logged (a diffusion run has no accuracy) says so. 1500×400 pixels."""
  from vision_models.training import metrics
  if not os.path.isfile(os.path.join(workdir, 'metrics.jsonl')):
    raise ConfigError(f'no metrics.jsonl in {workdir!r}; train first: python train.py --config=... '
                      f'--workdir={workdir}')
  records = metrics.read(workdir)
  panels = (('loss', ('train/loss', 'eval/loss', 'train/mse')),
            ('accuracy', ('train/accuracy', 'eval/accuracy', 'eval/top5_accuracy')),
            ('learning rate', ('train/learning_rate',)))
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(panels), figsize=CURVES_SIZE, dpi=DPI)
  for ax, (title, keys) in zip(axes, panels):
    for key in keys:
      points = [(r['step'], r[key]) for r in records if key in r]
      if points:
        steps, values = zip(*points)
        ax.plot(steps, values, marker='o' if key.startswith('eval/') else None, markersize=3, label=key)
    ax.set_title(title)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=8)
    else:
      ax.text(0.5, 0.5, 'not logged', ha='center', va='center', transform=ax.transAxes, color='gray')
  losses = [r[k] for r in records for k in ('train/loss', 'eval/loss') if k in r]
  if losses and min(losses) > 0:
    axes[0].set_yscale('log')
  fig.suptitle(os.path.basename(os.path.abspath(workdir)))
  fig.tight_layout()
  return _save(fig, out_png)


def sample_grid(images: np.ndarray, labels: Sequence[int], out_png: str, columns: int = 8,
                class_names: Sequence[str] | None = None) -> str:
  """One row per class (its first `columns` images, uint8 NHWC), the class on the left. Classes × columns cells of
  `CELL` inches (columns capped at the largest class's count): (columns · 100) × (classes · 100) pixels."""
  images, labels = np.asarray(images), np.asarray(labels)
  if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(labels):
    raise ConfigError(f'sample_grid wants uint8 NHWC images and one label each; got {images.dtype} '
                      f'{images.shape} and {len(labels)} labels')
  classes, counts = np.unique(labels, return_counts=True)
  columns = min(columns, int(counts.max()))
  plt = _pyplot()
  fig, axes = plt.subplots(len(classes), columns, figsize=(columns * CELL, len(classes) * CELL), dpi=DPI,
                           squeeze=False)
  for r, c in enumerate(classes):
    row = images[labels == c][:columns]
    for j, ax in enumerate(axes[r]):
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_frame_on(False)
      if j < len(row):
        image = row[j]
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap='gray', vmin=0, vmax=255,
                  interpolation='nearest')
    axes[r, 0].set_ylabel(class_names[c] if class_names else str(c), rotation=0, ha='right', va='center')
  fig.subplots_adjust(left=0.06, right=1, bottom=0, top=1, wspace=0.05, hspace=0.05)
  return _save(fig, out_png)


def _block_names(params: dict) -> list[str]:
  return sorted((k for k in params if k.startswith('blocks_')), key=lambda k: int(k.split('_')[1]))


def attention_weights(module: Any, variables: dict, images: jax.Array, block: int = -1) -> jax.Array:
  """softmax(q kᵀ/√d) of a ViT block's self-attention, `[batch, heads, tokens, tokens]`, float32.

  The block's input to attention (its `norm1` output) is captured with `capture_intermediates`, and q, k are
  recomputed from the block's `attn` kernels, so any attention implementation (flash included) can be inspected.
  """
  name = _block_names(variables['params'])[block]
  # With XLA's attention and norms no tokens are padded for a kernel, and `norm1` returns the normalised tokens alone.
  module = module.clone(attn_impl='xla', norm_impl='xla')

  @jax.jit
  def weights(variables, images):
    _, state = module.apply(variables, images, train=False, mutable=['intermediates'],
                            capture_intermediates=lambda m, _: m.name == 'norm1')
    x = state['intermediates'][name]['norm1']['__call__'][0].astype(jnp.float32)
    attn = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), variables['params'][name]['attn'])

    def proj(which):
      y = jnp.einsum('btd,dhk->bthk', x, attn[f'{which}_kernel'])
      return y + attn[f'{which}_bias'] if f'{which}_bias' in attn else y

    q, k = proj('query'), proj('key')
    return jax.nn.softmax(jnp.einsum('bqhd,bkhd->bhqk', q, k) * q.shape[-1] ** -0.5, axis=-1)

  return weights(variables, images)


def vit_attention_maps(module: Any, variables: dict, images: np.ndarray, out_png: str, block: int = -1) -> np.ndarray:
  """Per head, where the last (or `block`) attention looks: the class token's attention over the patches
  (pool='token'), else the attention each patch receives averaged over the queries. Each row shows an image and one
  map per head: (1 + heads) × batch cells of `CELL` inches. Returns the maps `[batch, heads, h, w]`."""
  images = np.asarray(images, np.float32)
  weights = np.asarray(attention_weights(module, variables, images, block))
  patch = module.patch_size
  h, w = images.shape[1] // patch, images.shape[2] // patch
  extra = weights.shape[-1] - h * w  # Class (and distillation) tokens come first.
  rows = weights[:, :, 0, extra:] if extra else weights.mean(axis=2)
  maps = rows.reshape(*weights.shape[:2], h, w)
  batch, heads = maps.shape[:2]
  plt = _pyplot()
  fig, axes = plt.subplots(batch, heads + 1, figsize=((heads + 1) * CELL, batch * CELL), dpi=DPI, squeeze=False)
  low, high = images.min(), images.max()
  for b in range(batch):
    shown = (images[b] - low) / max(high - low, 1e-6)
    axes[b, 0].imshow(shown[..., 0] if shown.shape[-1] == 1 else shown, cmap='gray', interpolation='nearest')
    for j in range(heads):
      axes[b, j + 1].imshow(maps[b, j], cmap='inferno', interpolation='nearest')
    for ax in axes[b]:
      ax.set_xticks([])
      ax.set_yticks([])
  for j in range(heads):
    axes[0, j + 1].set_title(f'head {j}', fontsize=8)
  fig.subplots_adjust(left=0, right=1, bottom=0, top=0.9, wspace=0.05, hspace=0.05)
  _save(fig, out_png)
  return maps


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  curves = sub.add_parser('curves', help='training curves of a workdir → DIR/curves.png')
  samples = sub.add_parser('samples', help='grid of DIR/samples.npz → DIR/samples_grid.png')
  for p in (curves, samples):
    p.add_argument('--workdir', required=True)
    p.add_argument('--out', default=None, help='PNG path (default: in the workdir)')
  args = parser.parse_args(argv)
  try:
    if args.command == 'curves':
      out = training_curves(args.workdir, args.out or os.path.join(args.workdir, 'curves.png'))
    else:
      path = os.path.join(args.workdir, 'samples.npz')
      if not os.path.isfile(path):
        raise ConfigError(f'no samples.npz in {args.workdir!r}; sample first: python eval.py --config=... '
                          f'--workdir={args.workdir}')
      with np.load(path) as f:
        out = sample_grid(f['images'], f['labels'], args.out or os.path.join(args.workdir, 'samples_grid.png'))
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
