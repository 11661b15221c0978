"""keep_freed_memory and release_freed_memory change how this process's malloc behaves, so
each case runs in a fresh interpreter."""

import subprocess
import sys

import pytest

# Allocates and touches 4 blocks of 100 MB (above glibc's 32 MB mmap limit, below ours), frees them, and prints the resident memory (MB) after the free
# and after release_freed_memory.
SCRIPT = """
import sys
from inception_jax import hostmem
applied = hostmem.keep_freed_memory() if sys.argv[1] == 'keep' else False
import numpy as np

def rss_mb():
  return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]) // 1024

blocks = [np.ones(100 * 2**20, np.uint8) for _ in range(4)]
del blocks
after_free = rss_mb()
hostmem.release_freed_memory()
print(applied, after_free, rss_mb())
"""


def run(mode, **env):
  import os

  out = subprocess.run(
      [sys.executable, '-c', SCRIPT, mode], capture_output=True, text=True, check=True, env=dict(os.environ, **env)
  ).stdout.split()
  return out[0] == 'True', int(out[1]), int(out[2])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc and /proc are Linux-only')
def test_kept_blocks_stay_resident_until_released():
  applied, after_free, after_release = run('keep')
  assert applied
  assert after_free - after_release > 350  # the 400 MB block was kept for reuse, then handed back


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc and /proc are Linux-only')
def test_default_malloc_unmaps_large_blocks_and_the_switch_turns_keeping_off():
  _, default_free, _ = run('default')
  applied, off_free, _ = run('keep', INCEPTION_JAX_KEEP_FREED_MEMORY='0')
  assert not applied
  kept = run('keep')[1]
  assert kept - default_free > 350 and kept - off_free > 350
