"""Orbax checkpoints of the train state: save every N steps, keep the last K, resume.

What a run can count on:
- A checkpoint is written to a temporary folder and renamed when complete (Orbax's own
  protocol), so an interrupted save never replaces a good checkpoint; temporary folders
  left by a killed run are removed when the next one starts.
- Every save records a checksum of each array (`fingerprint`, computed on the devices
  that hold the arrays) and refuses a state with NaN or infinity; its small JSON record
  (`meta`) carries a checksum of its own. Every restore checks both, so neither a damaged
  array nor damaged metadata is ever loaded or trusted.
- Only evidence of damage sets a checkpoint aside: a failed checksum, a truncated or
  unparsable file, a missing item. Such a step is moved, never deleted, into
  `<directory>_set_aside/` with a one-line warning, and the run resumes from the newest
  good one. An error of the environment (permissions, memory, an unreachable filesystem,
  anything that is not evidence of damage) moves nothing: `CheckpointReadError`.
- With several processes, every one reads each step and they agree before anything is
  moved: the run restores the newest step that all of them can read.
- A save that cannot fit (the disk's free space, ulimit -f) is refused before anything is
  written, and a save that fails while writing is one `CheckpointWriteError` naming the step,
  the cause and the newest saved step; the steps saved before are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from inception_jax import files


class CheckpointError(RuntimeError):
  """No checkpoint in a directory can be read into the expected state."""


class CheckpointMismatchError(CheckpointError):
  """A readable checkpoint of another model or optimizer: an error, never set aside."""


class CheckpointReadError(CheckpointError):
  """A checkpoint could not be read for a reason that is not evidence of damage: nothing was moved."""


class CheckpointWriteError(CheckpointError):
  """A save that did not fit or failed while writing (a full disk, say); the older steps are kept."""


class NonFiniteStateError(FloatingPointError):
  """A state with NaN or infinity was about to be saved."""


class _Damaged(Exception):
  """Evidence that a step's files were damaged after it was written (internal: restore() sets it aside)."""


# Status codes TensorStore puts in its messages, and what they say about a read that failed.
_ENVIRONMENT = re.compile(
    r'\b(PERMISSION_DENIED|RESOURCE_EXHAUSTED|UNAVAILABLE|DEADLINE_EXCEEDED|UNAUTHENTICATED|CANCELLED|ABORTED)\b'
    r'|out of memory',
    re.IGNORECASE,
)
# A truncated or missing file, an item Orbax cannot find; 'pytree structure error' comes from a missing
# or wrong _METADATA once the recorded shapes have matched the expected ones.
_DAMAGE = re.compile(
    r'\b(DATA_LOSS|OUT_OF_RANGE|FAILED_PRECONDITION|NOT_FOUND)\b|was not found in the checkpoint|pytree structure error'
)


# A layout newer than the installed TensorStore reads (its OCDBT manifest's format version): not damage.
_NEWER_LAYOUT = re.compile(r'Maximum supported version is \d+ but received: \d+')


def _chain(error: BaseException) -> list[BaseException]:
  """`error` and the errors it was raised from (or during), outermost first."""
  chain, seen = [], error
  while seen is not None and len(chain) < 16:
    chain.append(seen)
    seen = seen.__cause__ or seen.__context__
  return chain


def _is_damage(error: BaseException) -> bool:
  """True only on evidence that files are damaged; an error of the environment, or one not understood, is not."""
  chain = _chain(error)
  missing = (FileNotFoundError, NotADirectoryError)
  if any(
      isinstance(e, MemoryError)
      or (isinstance(e, OSError) and not isinstance(e, missing))
      or _ENVIRONMENT.search(str(e))
      for e in chain
  ):
    return False
  unparsable = (json.JSONDecodeError, UnicodeDecodeError, EOFError)
  return any(isinstance(e, unparsable + missing) or _DAMAGE.search(str(e)) for e in chain)


def _first_line(error: BaseException) -> str:
  return f'{type(error).__name__}: {(str(error).strip().splitlines() or [""])[0][:300]}'


def _digest(record: dict) -> str:
  return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(',', ':')).encode()).hexdigest()


class Checkpointer:
  """The train state (`state`) and a small JSON record (`meta`) per saved step."""

  def __init__(self, directory: str, *, save_every_steps: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.set_aside_directory = self.directory + '_set_aside'
    self._saving = None  # the step of the save in progress
    # Orbax logs a failed background write with its traceback, then raises the error to the
    # caller: here, as one CheckpointWriteError. (Installed once; other Orbax users still get the error.)
    logging.get_absl_logger().addFilter(_orbax_write_error_record)
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
    # Reads go through a manager of this process alone: Orbax ends a restore with a barrier of
    # all processes, which would leave the others waiting when one process's read fails. The
    # processes agree on each read's outcome themselves (_everywhere).
    with _without_read_only_notice():
      self._reader = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
              read_only=True,
              save_interval_steps=0,  # what read_only sets, given here so that Orbax need not warn about it
              create=False,
              multiprocessing_options=ocp.options.MultiprocessingOptions(
                  primary_host=jax.process_index(), active_processes={jax.process_index()}
              ),
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
    """Writes `state` with its checksums: in the background if async_save (wait() waits for it).
    `meta` must be JSON (it comes back from restore() as written, tuples as lists)."""
    checksums, finite = fingerprint(state)
    if not finite:
      raise NonFiniteStateError(f'the state of step {step} holds NaN or infinity; it was not saved')
    meta = {**meta, 'checksums': checksums, 'shapes': _shapes(state)}
    meta['meta_checksum'] = _digest(meta)
    if problem := files.room_for(self.directory, sum(x.nbytes for x in jax.tree.leaves(state))):
      raise CheckpointWriteError(f'cannot save step {step} in {self.directory}: {problem}; {self._resume_advice()}')
    self._saving = step
    with self._write_errors():
      self._manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True
      )

  def restore(
      self, abstract_state: Any, *, rewind_to: int = -1, check: Callable[[dict, int], None] = lambda meta, step: None
  ) -> tuple[Any, dict] | None:
    """(state, meta) of the newest good checkpoint, or None when there is none at all.

    `abstract_state` gives the shapes, dtypes and shardings to restore into. Damaged
    checkpoints are set aside, newest first, until one restores and passes its checksums;
    if every one is damaged, CheckpointError. A read that fails for any other reason raises
    CheckpointReadError and moves nothing. `rewind_to >= 0` resumes from that step: the
    checkpoints after it are set aside, unless the newest one already continues from it
    (a rewound run that was interrupted again resumes where it stopped). `check(meta, step)`
    may refuse the step a run would resume from, by raising: it runs, as the comparison of
    the shapes does, before anything is moved.
    """
    self._reader.reload()
    steps = self.all_steps()
    if rewind_to >= 0:
      steps = self._rewind(steps, rewind_to, abstract_state, check)
    failed = []
    for step in reversed(steps):
      try:
        return self._restore(step, abstract_state, check)
      except _Damaged as e:
        logging.warning('%s', e)
        self.set_aside(step, 'unreadable', 'it is damaged')
        failed.append(step)
    if failed:
      raise CheckpointError(
          f'None of the checkpoints in {self.directory} (steps {sorted(failed)}) could be read; they were moved to '
          f'{self.set_aside_directory}. Running the same command again starts over from step 0.'
      )
    return None

  def newest_meta(self) -> dict | None:
    """The record of the newest step whose record is sound (None: no such step); moves nothing."""
    self._reader.reload()
    for step in reversed(self.all_steps()):
      try:
        return self._everywhere(lambda step=step: self._meta(step))
      except _Damaged:
        continue  # restore() sets it aside
    return None

  def _rewind(self, steps: list[int], rewind_to: int, abstract_state: Any, check) -> list[int]:
    """The steps left after setting aside those after `rewind_to`, unless the newest continues from it."""
    if rewind_to not in steps:
      raise CheckpointError(
          f'resume_from_step={rewind_to}, but {self.directory} holds no checkpoint of that step; it holds steps {steps}.'
      )
    try:
      if self._everywhere(lambda: self._meta(steps[-1])).get('resumed_from') == rewind_to:
        return steps  # a rewound run that was interrupted again
    except _Damaged:
      pass  # set aside with the other steps after rewind_to
    try:
      self._everywhere(lambda: self._checked_meta(rewind_to, abstract_state, check))  # refusals move nothing
    except _Damaged:
      pass  # set aside by restore(), which falls back past it
    for step in steps:
      if step > rewind_to:
        self.set_aside(step, f'after_{rewind_to}', f'resume_from_step={rewind_to}')
    return [s for s in steps if s <= rewind_to]

  def _checked_meta(self, step: int, abstract_state: Any, check) -> dict:
    """The step's record, once its shapes match `abstract_state`'s and `check` accepts it."""
    meta = self._meta(step)
    saved, expected = meta['shapes'], _shapes(abstract_state)
    differ = sorted(k for k in saved.keys() | expected.keys() if saved.get(k) != expected.get(k))
    if differ:  # sealed metadata of another structure: a config change, not damage
      k = differ[0]
      raise CheckpointMismatchError(
          f'The checkpoint of step {step} in {self.directory} was written for a different model or optimizer: '
          f'{len(differ)} array(s) differ ({k}: saved {saved.get(k)}, this config {expected.get(k)}). Run with '
          'the config it was written with, or use a new --workdir.'
      )
    check(meta, step)
    return meta

  def _restore(self, step: int, abstract_state: Any, check) -> tuple[Any, dict]:
    def read():
      meta = self._checked_meta(step, abstract_state, check)  # small: read first, and once
      return self._read(step, state=ocp.args.StandardRestore(abstract_state)).state, meta

    state, meta = self._everywhere(read)
    actual, _ = fingerprint(state)  # on every process's devices at once: all processes reach the same verdict
    expected = meta['checksums']
    bad = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
    if bad:
      raise _Damaged(
          f'The checkpoint of step {step} in {self.directory} fails its checksums in {len(bad)} array(s) '
          f'({", ".join(bad[:3])}{", ..." if len(bad) > 3 else ""}): its files were damaged after it was written.'
      )
    return state, meta

  def _meta(self, step: int) -> dict:
    """The step's JSON record, checked against its own checksum (_Damaged if it fails).

    Records written before they were sealed (they hold 'data_position') are read as they are:
    their arrays' checksums still verify the state. Older still, without checksums, they are
    refused (CheckpointMismatchError) and left in place.
    """
    meta = self._read(step, meta=ocp.args.JsonRestore()).meta
    sealed = isinstance(meta, dict) and meta.get('meta_checksum')
    record = {k: v for k, v in meta.items() if k != 'meta_checksum'} if sealed else None
    if not sealed and isinstance(meta, dict) and 'meta_checksum' not in meta and 'data_position' in meta:
      if not all(isinstance(meta.get(k), dict) for k in ('checksums', 'shapes')):
        raise CheckpointMismatchError(
            f'The checkpoint of step {step} in {self.directory} was written by an early inception_jax and carries no '
            'checksums: it cannot be verified, so it is not resumed, and nothing was moved. Use a new --workdir.'
        )
      record = meta  # checksummed, not yet sealed
    elif (
        not sealed
        or _digest(record) != sealed
        or not all(isinstance(record.get(k), dict) for k in ('checksums', 'shapes'))
    ):
      raise _Damaged(
          f'The checkpoint of step {step} in {self.directory} has damaged metadata (its meta record '
          f'{"fails its checksum" if sealed else "is missing its checksum"}): it cannot be verified.'
      )
    return record

  def _read(self, step: int, **items) -> Any:
    """Restores `items` of `step`: _Damaged on evidence of damage, CheckpointReadError otherwise."""
    try:
      return self._reader.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      if newer := next(filter(None, (_NEWER_LAYOUT.search(str(x)) for x in _chain(e))), None):
        raise CheckpointReadError(
            f'The checkpoint of step {step} in {self.directory} is in a layout this installation cannot read '
            f'({newer.group()}): it is no evidence of damage, so nothing was moved; install the orbax-checkpoint '
            'and tensorstore that wrote it, or newer, and run the same command again.'
        ) from e
      if _is_damage(e):
        raise _Damaged(f'The checkpoint of step {step} in {self.directory} is damaged ({_first_line(e)}).') from e
      raise CheckpointReadError(
          f'The checkpoint of step {step} in {self.directory} could not be read ({_cause(e)}); that is no '
          'evidence of damage, so nothing was moved: fix the cause (permissions, memory, the filesystem) and run '
          'the same command again.'
      ) from e

  def _everywhere(self, read: Callable[[], Any]) -> Any:
    """`read()` on every process, then an agreement: its result where every process succeeded; else the
    same error on all of them (an error of the environment anywhere first: then nothing may be moved)."""
    try:
      result, error, outcome = read(), None, 0
    except _Damaged as e:
      result, error, outcome = None, e, 1
    except CheckpointError as e:
      result, error, outcome = None, e, 2
    outcomes = [outcome]
    if jax.process_count() > 1:
      outcomes = np.ravel(multihost_utils.process_allgather(np.int32(outcome))).tolist()
    if max(outcomes) == outcome and error is not None:
      raise error
    if max(outcomes) == 2:
      raise CheckpointReadError(
          f'Process {outcomes.index(2)} could not read a checkpoint in {self.directory} (its log says why); '
          'nothing was moved: fix the cause and run the same command again.'
      )
    if max(outcomes) == 1:
      raise _Damaged(f'Process {outcomes.index(1)} found a checkpoint in {self.directory} damaged (its log says how).')
    return result

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
    self._reader.reload()

  def reached_preemption(self, step: int) -> bool:
    """True at the step where every process saves after a preemption notice (multi-process
    runs; JAX's preemption service turns SIGTERM on any host into that agreement)."""
    return self._manager.reached_preemption(step)

  def check_for_errors(self) -> None:
    """Raises the error of a background save that failed (a full disk, say): CheckpointWriteError."""
    with self._write_errors():
      self._manager.check_for_errors()

  def wait(self) -> None:
    with self._write_errors():
      self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
    self._reader.close()

  @contextlib.contextmanager
  def _write_errors(self):
    """An error of the save in progress as one CheckpointWriteError: its step and its cause."""
    try:
      yield
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # Orbax's and TensorStore's errors of a write
      self._manager.reload()
      raise CheckpointWriteError(
          f'cannot save step {self._saving} in {self.directory} ({_cause(e)}); {self._resume_advice()}'
      ) from e

  def _resume_advice(self) -> str:
    latest = self._manager.latest_step()
    if latest is None:
      return 'no step is saved yet: make room and run the same command to start again.'
    return f'the newest saved step is {latest}: make room and run the same command to resume from it.'


_ORBAX_WRITE_ERROR = re.compile(
    r'_SignalingThread\.run\(\) raised an exception|Handler Commit operations|Save Finalize'
)


def _orbax_write_error_record(record) -> bool:
  """False for Orbax's ERROR logs of a failed background write: the Checkpointer raises that error itself."""
  return not (record.levelno >= logging.converter.STANDARD_ERROR and _ORBAX_WRITE_ERROR.search(record.getMessage()))


# TensorStore's message of a failed file operation: ... "FILE": REASON [os_error_code='N'] ...
_TENSORSTORE_OS_ERROR = re.compile(r'"([^"]+)": [^"\[]*\[os_error_code=\'?(\d+)')


def _cause(error: BaseException) -> str:
  """What failed, in a few words: an OS error's file and text (TensorStore's too), else the first line."""
  for seen in _chain(error):
    if isinstance(seen, OSError) and seen.strerror:
      return f'{seen.filename}: {seen.strerror}' if seen.filename else seen.strerror
    if match := _TENSORSTORE_OS_ERROR.search(str(seen)):
      return f'{match.group(1)}: {os.strerror(int(match.group(2)))}'
  return _first_line(error)


@contextlib.contextmanager
def _without_read_only_notice():
  """Orbax warns 'Given directory is read only' whenever a read-only manager is made: no news to a user."""
  drop = lambda record: not record.getMessage().startswith('Given directory is read only')
  logging.get_absl_logger().addFilter(drop)
  try:
    yield
  finally:
    logging.get_absl_logger().removeFilter(drop)


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
