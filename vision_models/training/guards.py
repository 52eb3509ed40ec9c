"""What stops a run cleanly: a preemption notice (SIGTERM, as TPU VMs and SLURM send) and non-finite numbers."""
import math
import signal
from typing import Any, Mapping

import jax
import numpy as np

from vision_models.errors import TrainingError

WATCHED = ('train/loss', 'train/grad_norm')  # A NaN anywhere in the gradients makes their norm NaN.


class Preemption:
  """Records SIGTERM; `requested()` is true on every process as soon as any one of them got the signal."""

  def __init__(self):
    self._flag = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self._flag = True

  def requested(self) -> bool:
    if jax.process_count() == 1:
      return self._flag
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.array(self._flag))))

  def close(self) -> None:
    signal.signal(signal.SIGTERM, self._previous)


def check_finite(step: int, metrics: Mapping[str, Any]) -> None:
  """Raises TrainingError naming the step and the first non-finite watched metric."""
  for name in WATCHED:
    value = float(np.asarray(metrics[name]))
    if not math.isfinite(value):
      raise TrainingError(f'step {step}: {name} is {value}; stopping with the last good checkpoint kept (lower the '
                          'learning rate, check the data, or set config.skip_nonfinite=True to skip such updates)')
