"""Orbax checkpoints of the train state: async, atomic (Orbax finalises a step by renaming its temporary directory),
keep the last N, restore onto any mesh, and never lose the last good one.

When training resumes, checkpoints newer than the newest one that reads back (truncated, corrupted) are reported and
moved aside to `DIR/corrupt/STEP`, so that keeping N can never delete the good ones instead. When none reads back,
nothing is moved and the run stops: starting afresh would drop the metrics history. Readers (eval, export) move
nothing. A checkpoint whose tree or shapes do not match the model is a config error, not corruption: it names the
first mismatching entry.
"""
import os
import shutil
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from vision_models.errors import ConfigError, TrainingError


def _path_str(path: tuple) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k)))) for k in path)


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` holding one pytree (the TrainState) per step."""

  def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    """Starts an (async) save of `state` at `step`; returns whether a save started."""
    return self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def check_shapes(self, step: int, target: Any) -> None:
    """Raises ConfigError naming the first entry that only one of the checkpoint and `target` has, or whose saved
    shape differs from `target`'s (e.g. a run resumed without the EMA or the optimizer it was trained with)."""
    saved = {_path_str(p): leaf.shape for p, leaf in jax.tree_util.tree_leaves_with_path(self.manager.item_metadata(
        step)) if hasattr(leaf, 'shape')}
    wanted = {_path_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(target)}
    extra = sorted(set(saved) - set(wanted))
    if extra:
      raise ConfigError(f'checkpoint {self.directory}/{step} has {extra[0]} (and {len(extra) - 1} more entries) that '
                        'this config does not: it was written by another config (model, optimizer or EMA); use the '
                        'config it was trained with or a new --workdir')
    for name, leaf in wanted.items():
      if name not in saved:
        raise ConfigError(f'checkpoint {self.directory}/{step} has no {name}: it was written by another config '
                          '(model, optimizer or EMA); use the config it was trained with or a new --workdir')
      if tuple(saved[name]) != tuple(leaf.shape):
        raise ConfigError(f'checkpoint {self.directory}/{step}: {name} has shape {tuple(saved[name])} but the model '
                          f'wants {tuple(leaf.shape)}; use the config it was trained with or a new --workdir')

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores `step` (default: the latest) laid out as `target` (ShapeDtypeStructs with shardings)."""
    step = self.latest_step() if step is None else step
    self.check_shapes(step, target)
    return self.manager.restore(step, args=ocp.args.StandardRestore(target))

  def restore_latest_good(self, target: Any, set_aside: bool = False) -> tuple[int | None, Any]:
    """`(step, state)` of the newest checkpoint that reads back, `(None, None)` when there are none.

    Newer unreadable ones are reported, and with `set_aside` (the trainer) moved to `DIR/corrupt/STEP`. Raises
    TrainingError, moving nothing, when there are checkpoints and none reads back."""
    failed = []
    for step in reversed(self.all_steps()):
      try:
        state = self.restore(target, step)
      except ConfigError:
        raise
      except Exception as e:  # Orbax/TensorStore raise many types for unreadable files.
        failed.append((step, e))
        continue
      for bad, error in failed:
        self._report(bad, error, set_aside)
      return step, state
    if failed:
      step, error = failed[0]
      raise TrainingError(f'none of the {len(failed)} checkpoints in {self.directory} reads back (step {step}: '
                          f'{type(error).__name__}: {str(error)[:200]}); nothing was moved: fix the storage, restore '
                          'them from a copy, or train in a new --workdir')
    return None, None

  def _report(self, step: int, error: Exception, set_aside: bool) -> None:
    aside = os.path.join(os.path.dirname(self.directory), 'corrupt', str(step))
    if jax.process_index() == 0:
      print(f'warning: checkpoint {self.directory}/{step} cannot be read ({type(error).__name__}: '
            f'{str(error)[:200]}); ' + (f'moved to {aside}; ' if set_aside else '') + 'using an older one',
            file=sys.stderr)
    if not set_aside:
      return
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      shutil.rmtree(aside, ignore_errors=True)
      shutil.move(os.path.join(self.directory, str(step)), aside)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f'set_aside_{step}')
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
