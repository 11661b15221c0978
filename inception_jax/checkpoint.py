"""Orbax checkpoints of the train state: save every N steps, keep the last K, resume.

A checkpoint is written to a temporary folder and renamed when complete (Orbax's own
protocol), so an interrupted save never replaces a good checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be read into the expected state."""


class Checkpointer:
  """The train state (`state`) and a small JSON record (`meta`) per saved step."""

  def __init__(self, directory: str, *, save_every_steps: int, keep: int):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=max(save_every_steps, 1), create=True),
        item_names=('state', 'meta'),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force
    )

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores `step` into the shapes, dtypes and shardings of `abstract_state`."""
    try:
      restored = self._manager.restore(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
      )
    except Exception as e:
      raise CheckpointError(
          f'Could not restore the checkpoint of step {step} in {self.directory}: {type(e).__name__}: {e}\n'
          'It is unreadable or was written for a different model or optimizer. Use a new --workdir to '
          'start over, or move that step folder aside to resume from an earlier checkpoint.'
      ) from e
    return restored.state, dict(restored.meta)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the shardings a restored state must have."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
