"""host_memory: the entry points restart once with glibc set to keep freed memory."""

import os
import subprocess
import sys

from inception_jax import host_memory

PROGRAM = """
import os, sys
from inception_jax import host_memory
print('start', flush=True)
host_memory.pool_host_memory()
print(sys.argv[1:], [os.environ.get(k) for k in sorted(host_memory.POOLED_MALLOC_ENV)])
"""


def _run(**extra_env):
  """The program's output lines, run with none of glibc's settings but `extra_env`."""
  env = {k: v for k, v in os.environ.items() if k not in host_memory.POOLED_MALLOC_ENV} | extra_env
  out = subprocess.run([sys.executable, '-c', PROGRAM, '--flag=1'], env=env, capture_output=True, text=True,
                       check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  return out.stdout.splitlines()


def test_restarts_once_with_the_same_arguments_and_pooled_malloc():
  lines = _run()
  expected = [host_memory.POOLED_MALLOC_ENV[k] for k in sorted(host_memory.POOLED_MALLOC_ENV)]
  assert lines == ['start', 'start', f"['--flag=1'] {expected}"]


def test_a_user_setting_is_left_alone():
  lines = _run(MALLOC_MMAP_MAX_='65536')
  assert lines == ['start', "['--flag=1'] [None, '65536', None]"]
  assert host_memory.pooled_malloc_env({'MALLOC_ARENA_MAX': '4'}) is None
