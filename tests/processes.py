"""Real processes on localhost joined by jax.distributed (CPU collectives), for the multi-process tests."""

import os
import pathlib
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_two(module: str, function: str, *args, devices_each: int = 2) -> list[str]:
  """Runs `tests/<module>.<function>(coordinator, process_id, *args)` in two processes; returns
  their outputs once both ended with status 0."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    coordinator = f'localhost:{s.getsockname()[1]}'
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_each}', PYTHONPATH=str(ROOT))
  call = ', '.join(repr(a) for a in args)
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
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          text=True,
      )
      for i in range(2)
  ]
  outputs = [w.communicate(timeout=300)[0] for w in workers]
  for i, (w, out) in enumerate(zip(workers, outputs)):
    assert w.returncode == 0, f'process {i}:\n{out[-3000:]}'
  return outputs
