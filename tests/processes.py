"""Real processes on localhost joined by jax.distributed (CPU collectives), for the multi-process tests."""

import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_two(module: str, function: str, *args, devices_each: int = 2, timeout: float = 300) -> list[str]:
  """Runs `tests/<module>.<function>(coordinator, process_id, *args)` in two processes; returns
  their outputs once both ended with status 0."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    coordinator = f'localhost:{s.getsockname()[1]}'
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_each}', PYTHONPATH=str(ROOT))
  call = ', '.join(repr(a) for a in args)
  # Outputs go to files, not pipes: a pipe that is not being read fills up, its process blocks on
  # a log line, and the other one waits for it in a collective.
  logs = [tempfile.TemporaryFile('w+') for _ in range(2)]
  workers = [
      subprocess.Popen(
          [
              sys.executable,
              '-c',
              f'import sys; sys.path.insert(0, "tests"); import {module}; '
              f'{module}.{function}({coordinator!r}, {i}, {call})',
          ],
          cwd=ROOT,
          env=env,
          stdout=log,
          stderr=subprocess.STDOUT,
          text=True,
      )
      for i, log in enumerate(logs)
  ]
  deadline = time.monotonic() + timeout
  try:
    for w in workers:
      w.wait(max(deadline - time.monotonic(), 0))
  except subprocess.TimeoutExpired:
    for w in workers:
      w.kill()
      w.wait()
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
    log.close()
  for i, (w, out) in enumerate(zip(workers, outputs)):
    assert w.returncode == 0, f'process {i} ended with {w.returncode} (-9: hung for {timeout} s):\n{out[-3000:]}'
  return outputs
