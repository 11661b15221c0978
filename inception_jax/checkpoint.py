"""Orbax checkpoints of the train state: save every N steps, keep the last K, resume.

What a run can count on:
- A checkpoint is written to a temporary folder and renamed when complete (Orbax's own
  protocol), so an interrupted save never replaces a good checkpoint; temporary folders
  left by a killed run are removed when the next one starts.
- Every save records a checksum of each array (`fingerprint`, computed on the devices
  that hold the arrays) and refuses a state with NaN or infinity; every restore recomputes
  the checksums, so a damaged file is never loaded as weights.
- A checkpoint that cannot be read or fails its checksums is moved aside, never
  deleted, into `<directory>_set_aside/`, with a one-line warning, and the run resumes
  from the newest good one.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


class CheckpointError(RuntimeError):
  """No checkpoint in a directory can be read into the expected state."""


class CheckpointMismatchError(CheckpointError):
  """A readable checkpoint of another model or optimizer: an error, never set aside."""


class NonFiniteStateError(FloatingPointError):
  """A state with NaN or infinity was about to be saved."""


class Checkpointer:
  """The train state (`state`) and a small JSON record (`meta`) per saved step."""

  def __init__(self, directory: str, *, save_every_steps: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.set_aside_directory = self.directory + '_set_aside'
    self._save_every_steps = max(save_every_steps, 1)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
        ),
        item_names=('state', 'meta'),
    )

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    """Every save_every_steps (the loop adds the last step and a stop)."""
    return step % self._save_every_steps == 0

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Writes `state` with its checksums: in the background if async_save (wait() waits for it)."""
    checksums, finite = fingerprint(state)
    if not finite:
      raise NonFiniteStateError(f'the state of step {step} holds NaN or infinity; it was not saved')
    meta = {**meta, 'checksums': checksums, 'shapes': _shapes(state)}
    self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True
    )

  def restore(self, abstract_state: Any, *, rewind_to: int = -1) -> tuple[Any, dict] | None:
    """(state, meta) of the newest good checkpoint, or None when there is none at all.

    `abstract_state` gives the shapes, dtypes and shardings to restore into. Unreadable
    checkpoints are set aside, newest first, until one restores and passes its checksums;
    if every one fails, CheckpointError. `rewind_to >= 0` resumes from that step: the
    checkpoints after it are set aside, unless the newest one already continues from it
    (a rewound run that was interrupted again resumes where it stopped).
    """
    steps = self.all_steps()
    if rewind_to >= 0 and steps:
      if rewind_to not in steps:
        raise CheckpointError(
            f'resume_from_step={rewind_to}, but {self.directory} holds no checkpoint of that step; '
            f'it holds steps {steps}.'
        )
      if self._read_meta(steps[-1]).get('resumed_from') != rewind_to:
        for step in steps:
          if step > rewind_to:
            self.set_aside(step, f'after_{rewind_to}', f'resume_from_step={rewind_to}')
        steps = [s for s in steps if s <= rewind_to]
    failed = []
    for step in reversed(steps):
      try:
        return self._restore(step, abstract_state)
      except CheckpointMismatchError:
        raise
      except CheckpointError as e:
        logging.warning('%s', e)
        self.set_aside(step, 'unreadable', 'it is unreadable')
        failed.append(step)
    if failed:
      raise CheckpointError(
          f'None of the checkpoints in {self.directory} (steps {sorted(failed)}) could be read; they were moved to '
          f'{self.set_aside_directory}. Running the same command again starts over from step 0.'
      )
    return None

  def _restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    meta = self._read(step, meta=ocp.args.JsonRestore()).meta  # small: read first, and once
    saved = meta.get('shapes')
    if saved is not None:  # readable and recorded: a different structure is a config change, not damage
      expected = _shapes(abstract_state)
      differ = sorted(k for k in saved.keys() | expected.keys() if saved.get(k) != expected.get(k))
      if differ:
        k = differ[0]
        raise CheckpointMismatchError(
            f'The checkpoint of step {step} in {self.directory} was written for a different model or optimizer: '
            f'{len(differ)} array(s) differ ({k}: saved {saved.get(k)}, this config {expected.get(k)}). Run with the '
            'config it was written with, or use a new --workdir.'
        )
    state = self._read(step, state=ocp.args.StandardRestore(abstract_state)).state
    meta = dict(meta)
    expected = meta.get('checksums')
    if expected is None:
      logging.warning('The checkpoint of step %d has no checksums (written by an older version); not verified.', step)
    else:
      actual, _ = fingerprint(state)
      bad = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
      if bad:
        raise CheckpointError(
            f'The checkpoint of step {step} in {self.directory} fails its checksums in {len(bad)} array(s) '
            f'({", ".join(bad[:3])}{", ..." if len(bad) > 3 else ""}): its files were damaged after it was written.'
        )
    return state, meta

  def _read(self, step: int, **items) -> Any:
    """Restores `items` of `step`; whatever Orbax or TensorStore raise for a damaged folder is a CheckpointError."""
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      first_line = (str(e).strip().splitlines() or [''])[0][:300]
      raise CheckpointError(
          f'The checkpoint of step {step} in {self.directory} cannot be read ({type(e).__name__}: {first_line}).'
      ) from e

  def _read_meta(self, step: int) -> dict:
    try:
      return dict(self._read(step, meta=ocp.args.JsonRestore()).meta)
    except CheckpointError:  # unreadable: restore() sets it aside
      return {}

  def set_aside(self, step: int, suffix: str, why: str) -> None:
    """Moves a step folder out of the manager's sight (process 0 moves it; all wait for that)."""
    target = os.path.join(self.set_aside_directory, f'{step}-{suffix}-{time.strftime("%Y%m%d-%H%M%S")}')
    if jax.process_index() == 0:
      os.makedirs(self.set_aside_directory, exist_ok=True)
      os.rename(os.path.join(self.directory, str(step)), target)
      logging.warning('Moved the checkpoint of step %d aside, since %s: %s', step, why, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'checkpoint_set_aside_{step}')
    self._manager.reload()

  def reached_preemption(self, step: int) -> bool:
    """True at the step where every process saves after a preemption notice (multi-process
    runs; JAX's preemption service turns SIGTERM on any host into that agreement)."""
    return self._manager.reached_preemption(step)

  def check_for_errors(self) -> None:
    """Raises the error of a background save that failed (a full disk, say)."""
    self._manager.check_for_errors()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _shapes(tree: Any) -> dict[str, list[int]]:
  return {jax.tree_util.keystr(path): list(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def fingerprint(tree: Any) -> tuple[dict[str, int], bool]:
  """({path: checksum}, all floats finite) of a pytree of arrays, computed where they live.

  The checksum is sum_i word_i * (2i + 1) mod 2**32 over an array's bits: any change of a
  single element changes it, and so does any reordering.
  """
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  sums, finite = _fingerprint([leaf for _, leaf in leaves])
  sums = np.asarray(jax.device_get(sums))
  return {jax.tree_util.keystr(path): int(s) for (path, _), s in zip(leaves, sums)}, bool(finite)


@jax.jit
def _fingerprint(leaves):
  sums, finite = [], jnp.bool_(True)
  for x in leaves:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if jnp.issubdtype(x.dtype, jnp.floating):
      finite &= jnp.all(jnp.isfinite(x))
    if x.dtype == jnp.bool_:
      words = x.astype(jnp.uint32)
    else:
      unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
      words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    # The row-major position of every element, built per axis so that sharded arrays stay sharded.
    position = jnp.zeros(x.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(x.ndim)):
      position += jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride % 2**32)
      stride *= x.shape[axis]
    sums.append(jnp.sum(words * (2 * position + 1), dtype=jnp.uint32))
  return jnp.stack(sums) if sums else jnp.zeros((0,), jnp.uint32), finite


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the shardings a restored state must have."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
