"""SIGTERM and SIGINT as requests to stop at the next step boundary, after saving.

Preemptible machines send SIGTERM some seconds before they stop; Ctrl-C sends SIGINT.
Either one lets the current step finish; the loop then saves that step, waits for every
save in flight and stops (`StopRequested`). A second signal stops at once, without saving.

With several processes every one must save the same step. JAX's preemption service
(started by `jax.distributed.initialize`) catches SIGTERM on any host and the hosts agree
on that step; Orbax's `reached_preemption` tells the loop when it has come. Here SIGTERM is
left to that service and SIGINT is handed to it as a SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
from absl import logging


class StopRequested(Exception):
  """Training stopped on a signal after saving its state; run the same command to resume."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


class StopSignals:
  """Context manager: `received` is the first SIGTERM/SIGINT that arrived inside it, or None."""

  def __init__(self):
    self.received: int | None = None
    self._previous: dict[int, object] = {}

  def __enter__(self) -> StopSignals:
    if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
      for signum in (signal.SIGTERM, signal.SIGINT):
        if signum == signal.SIGTERM and jax.process_count() > 1:
          continue  # JAX's preemption service owns it
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *unused) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def _handle(self, signum: int, frame) -> None:
    name = signal.Signals(signum).name
    if self.received is not None:
      logging.warning('Second %s: stopping now, without saving.', name)
      self.__exit__()
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.received = signum
    logging.warning('%s received: finishing this step, saving it, then stopping (send it again to stop at once).', name)
    if jax.process_count() > 1:
      os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption service, which tells every process
