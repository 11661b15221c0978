"""Keeping freed host memory in the process, as XLA's GPU and TPU clients keep device memory.

On the CPU backend every buffer of a step (outputs and XLA's temporaries: 1.6 GB per
training step of the seed's MNIST network) comes from glibc's malloc, and glibc maps every
block above 32 MB afresh and hands it back to the kernel when it is freed. Each step then
page-faults and zero-fills its buffers again: on a 2-core machine a fresh 560 MB output
costs 150-200 ms where writing into a reused one costs 25 ms. With one arena, no mmap'd
blocks and no trimming, glibc reuses the freed blocks instead (measured: the MNIST step at
batch 128 from 2.25 s to 1.70 s; README, "Performance"). PyTorch in the same process
gains from it as much.

glibc reads these settings only when a process starts, so `pool_host_memory` restarts the
process (the same command, with them in its environment) once, before any work is done.
"""

from __future__ import annotations

import os
import sys

from absl import logging

# glibc's names; a user who sets any of them keeps control (e.g. MALLOC_MMAP_MAX_=65536,
# glibc's default, keeps glibc's behaviour).
POOLED_MALLOC_ENV = {
    'MALLOC_ARENA_MAX': '1',  # worker threads allocate from the main heap too ...
    'MALLOC_MMAP_MAX_': '0',  # ... which grows with brk, never with per-block mmaps ...
    'MALLOC_TRIM_THRESHOLD_': str(2**40),  # ... and keeps what is freed at its top.
}


def pooled_malloc_env(environ: dict[str, str]) -> dict[str, str] | None:
  """`environ` with POOLED_MALLOC_ENV added, or None where nothing is to change: not Linux
  (glibc), or the user set one of its variables."""
  if not sys.platform.startswith('linux') or any(name in environ for name in POOLED_MALLOC_ENV):
    return None
  return {**environ, **POOLED_MALLOC_ENV}


def pool_host_memory() -> None:
  """Restarts this process (same interpreter, same arguments) with POOLED_MALLOC_ENV set,
  unless it is set already. Call it first thing in a program's main, before any JAX work.

  Harmless on GPU and TPU hosts, where it concerns host buffers only.
  """
  environ = pooled_malloc_env(dict(os.environ))
  if environ is None:
    return
  logging.info('Restarting with %s so that freed host memory is reused (inception_jax.host_memory).',
               ' '.join(f'{k}={v}' for k, v in POOLED_MALLOC_ENV.items()))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, environ)
