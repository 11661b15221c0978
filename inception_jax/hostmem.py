"""Host memory on Linux (glibc): keep freed blocks for reuse, give them back at chosen points.

    from inception_jax import hostmem
    hostmem.keep_freed_memory()      # first thing in a main, before jax or TensorFlow is imported
    ...
    hostmem.release_freed_memory()   # the train loop calls it before a checkpoint or an evaluation

On the CPU backend every buffer of a compiled call comes from glibc's malloc, which maps each
block above 32 MB afresh and unmaps it when freed, so every call faults in and zero-fills its
blocks again. `keep_freed_memory` serves blocks up to MMAP_THRESHOLD (256 MB) from one heap
and keeps them when freed: the seed's MNIST training step allocates a dozen blocks of 49 and
98 MB a step (activations, matmul workspaces), now reused. Larger blocks are still mapped
afresh: a step's 1.5 GB of temporaries are one such block, and the training loop amortizes it
by running config.steps_per_loop steps per call (a scan reuses its body's buffers). Keeping
the large blocks too was faster still (1.29 instead of 1.40 s a step at batch 128), but
then blocks of other sizes (a checkpoint's host copy, an evaluation's) fragment the heap,
the steps' blocks move, and the peak memory of a 470-step run reached 12 GB instead of 8.
`release_freed_memory` hands the heap's free pages back to the kernel (`malloc_trim`) where
the work changes shape: before a checkpoint and an evaluation.

Both are no-ops where they do not apply (not glibc, or `INCEPTION_JAX_KEEP_FREED_MEMORY=0`
in the environment), and harmless with accelerators, whose host buffers are small.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt's parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

MMAP_THRESHOLD = 256 * 2**20  # bytes; larger blocks are mapped afresh, as by default

_libc = None  # set once keep_freed_memory has applied its settings


def keep_freed_memory() -> bool:
  """Serves blocks up to MMAP_THRESHOLD from the main heap, which is never trimmed on free.

  Must run before other threads allocate (so before jax, TensorFlow or torch is imported):
  with its own arena, a thread's blocks above 64 MB are always mapped afresh. Returns whether
  the settings were applied.
  """
  global _libc
  if os.environ.get('INCEPTION_JAX_KEEP_FREED_MEMORY', '1') == '0':
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt, trim = libc.mallopt, libc.malloc_trim
  except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
    return False
  mallopt.argtypes, trim.argtypes = [ctypes.c_int, ctypes.c_int], [ctypes.c_size_t]
  # One arena, blocks up to MMAP_THRESHOLD from the heap, and a trim threshold of SIZE_MAX
  # (glibc reads the int -1 as size_t).
  if not (mallopt(_M_ARENA_MAX, 1) and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, -1)):
    return False
  _libc = libc
  return True


def keeping() -> bool:
  """Whether keep_freed_memory is in effect."""
  return _libc is not None


def release_freed_memory() -> None:
  """Returns the heap's free pages to the kernel (after keep_freed_memory; else nothing)."""
  if _libc is not None:
    _libc.malloc_trim(0)
