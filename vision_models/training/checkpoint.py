"""Orbax checkpoints of the train state: async, atomic (Orbax finalises a step by renaming its temporary directory),
keep the last N, restore the latest onto any mesh."""
import os
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` holding one pytree (the TrainState) per step."""

  def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    """Starts an (async) save of `state` at `step`; returns whether a save started."""
    return self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores `step` (default: the latest) laid out as `target` (ShapeDtypeStructs with shardings)."""
    step = self.latest_step() if step is None else step
    return self.manager.restore(step, args=ocp.args.StandardRestore(target))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
