"""Metrics to `DIR/metrics.jsonl` (one JSON object per line with `step`) and TensorBoard (`DIR/tensorboard`)."""
import json
import os
from typing import Any, Mapping

import jax
import numpy as np


class MetricWriter:
  """Writes scalars from process 0 only; other processes get a writer that does nothing."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.tb_dir = os.path.join(workdir, 'tensorboard')
    self._tb = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # Pure-Python event writer: no TensorFlow in the core.
      self._tb = SummaryWriter(self.tb_dir, flush_secs=10)

  def truncate_after(self, step: int) -> None:
    """Drops records past `step`: a resumed run rewrites the steps the interrupted one logged after its last
    checkpoint, so the file ends up as an uninterrupted run's."""
    if not self.enabled or not os.path.exists(self.path):
      return
    kept = [r for r in read(os.path.dirname(self.path)) if r['step'] <= step]
    with open(self.path + '.tmp', 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in kept)
    os.replace(self.path + '.tmp', self.path)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(np.asarray(v)) for k, v in metrics.items() if np.ndim(v) == 0}
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': int(step), **scalars}) + '\n')
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read(workdir: str) -> list[dict[str, Any]]:
  """Every record of `DIR/metrics.jsonl`."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]
