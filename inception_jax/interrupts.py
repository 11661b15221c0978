"""SIGTERM and SIGINT as requests to stop, after saving what there is to save.

Preemptible machines send SIGTERM some seconds before they stop; Ctrl-C sends SIGINT.
- Before training starts (reading the data, restoring, the first compile) there is nothing
  new to save: the first signal stops the run as soon as Python regains control (a compile
  is never cut short, but no step runs after it).
- While training, the current call finishes; an evaluation stops within one batch. The loop
  then saves that step, waits for every save in flight and stops (`StopRequested`).
- A second signal stops at once, without saving, even inside a long compile or step: a
  thread counts every delivery (Python itself runs its handler once, after the call, for
  any number of repeats).

With several processes every one must save the same step. JAX's preemption service
(started by `jax.distributed.initialize` unless `jax_enable_preemption_service` is off)
catches SIGTERM on any host and the hosts agree on that step; Orbax's `reached_preemption`
tells the loop when it has come. Then SIGTERM is left to that service and SIGINT is handed to
it as a SIGTERM. With the service off, each process takes both signals itself and the loop
agrees on the flag with the other processes after every call (`any_process`).
"""

from __future__ import annotations

import os
import signal
import socket
import threading

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


class StopRequested(BaseException):
  """The run stopped on a signal, after saving its state; run the same command to resume.

  A BaseException, as KeyboardInterrupt is: raised from a signal handler it must pass
  through any `except Exception` of the code it interrupts (TFDS, Orbax).
  """

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


def preemption_service() -> bool:
  """True where JAX's preemption service takes SIGTERM (several processes, service on)."""
  return jax.process_count() > 1 and jax.config.jax_enable_preemption_service


def any_process(flag: bool) -> bool:
  """`flag` or'ed over all processes (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


class StopSignals:
  """Context manager: `received` is the first SIGTERM/SIGINT that arrived inside it, or None.

  Until `training()` is called, the first signal raises StopRequested at once (one process;
  with several, stopping alone would leave the others waiting, so it is only recorded).
  """

  def __init__(self):
    self.received: int | None = None
    self._training = False
    self._previous: dict[int, object] = {}
    self._wakeup: tuple[socket.socket, socket.socket, int] | None = None

  def __enter__(self) -> StopSignals:
    if threading.current_thread() is not threading.main_thread():  # Python delivers signals there only
      return self
    for signum in (signal.SIGTERM, signal.SIGINT):
      if signum != signal.SIGTERM or not preemption_service():
        self._previous[signum] = signal.signal(signum, self._handle)
    # Python's C-level handler writes each delivery's number to this socket at once, however
    # long the main thread is busy in XLA; the watcher thread counts them.
    read, write = socket.socketpair()
    write.setblocking(False)
    self._wakeup = (read, write, signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False))
    threading.Thread(target=self._watch, args=(read,), name='stop-signals', daemon=True).start()
    return self

  def __exit__(self, *unused) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()
    if self._wakeup is not None:
      _, write, previous = self._wakeup
      signal.set_wakeup_fd(previous)
      self._wakeup = None
      write.close()  # the watcher's recv() returns b'', and it closes `read`

  def training(self) -> None:
    """From now on a first signal only sets `received`: the loop saves and stops."""
    self._training = True

  def _handle(self, signum: int, frame) -> None:
    del frame
    if self.received is not None:
      return  # the watcher thread deals with repeats
    self.received = signum
    name = signal.Signals(signum).name
    if not self._training and jax.process_count() == 1:
      raise StopRequested(f'Stopped by {name} before training started; nothing new to save.', signum)
    logging.warning(
        '%s received: finishing this call, saving its step, then stopping (send it again to stop at once).', name
    )
    if preemption_service():
      os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption service, which tells every process

  def _watch(self, read: socket.socket) -> None:
    count = 0
    while data := read.recv(64):
      for signum in data:
        if signum in (signal.SIGTERM, signal.SIGINT) and self._previous:
          count += 1
          if count == 2:
            logging.warning('Second %s: stopping now, without saving.', signal.Signals(signum).name)
            logging.flush()
            os._exit(128 + signum)  # pylint: disable=protected-access
    read.close()
