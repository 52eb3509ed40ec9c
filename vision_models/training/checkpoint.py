"""Orbax checkpoints of the train state: async, atomic (Orbax finalises a step by renaming its temporary directory),
keep the last N, restore onto any mesh, and never lose the last good one.

A latest checkpoint that cannot be read (truncated, corrupted) is reported, moved aside to `DIR/corrupt/STEP` so that
keeping N can never delete the good ones instead, and the previous checkpoint is restored. A checkpoint whose shapes
do not match the model is a config error, not corruption: it names the first mismatching parameter.
"""
import os
import shutil
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from vision_models.errors import ConfigError


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
    """Raises ConfigError naming the first leaf whose saved shape differs from `target`'s."""
    saved = {_path_str(p): leaf.shape for p, leaf in jax.tree_util.tree_leaves_with_path(self.manager.item_metadata(
        step)) if hasattr(leaf, 'shape')}
    for path, leaf in jax.tree_util.tree_leaves_with_path(target):
      name = _path_str(path)
      if name not in saved:
        raise ConfigError(f'checkpoint {self.directory}/{step} has no {name}: it was written by another model '
                          'config; use the config it was trained with or a new --workdir')
      if tuple(saved[name]) != tuple(leaf.shape):
        raise ConfigError(f'checkpoint {self.directory}/{step}: {name} has shape {tuple(saved[name])} but the model '
                          f'wants {tuple(leaf.shape)}; use the config it was trained with or a new --workdir')

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores `step` (default: the latest) laid out as `target` (ShapeDtypeStructs with shardings)."""
    step = self.latest_step() if step is None else step
    self.check_shapes(step, target)
    return self.manager.restore(step, args=ocp.args.StandardRestore(target))

  def restore_latest_good(self, target: Any) -> tuple[int | None, Any]:
    """`(step, state)` of the newest checkpoint that reads back, `(None, None)` when there is none."""
    for step in reversed(self.all_steps()):
      try:
        return step, self.restore(target, step)
      except ConfigError:
        raise
      except Exception as e:  # Orbax/TensorStore raise many types for unreadable files.
        self._set_aside(step, e)
    return None, None

  def _set_aside(self, step: int, error: Exception) -> None:
    aside = os.path.join(os.path.dirname(self.directory), 'corrupt', str(step))
    if jax.process_index() == 0:
      print(f'warning: checkpoint {self.directory}/{step} cannot be read ({type(error).__name__}: '
            f'{str(error)[:200]}); moved to {aside}, trying the previous one', file=sys.stderr)
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
