"""JAX's persistent compilation cache: a program compiled once is read back by later processes.

A resumed run, a second `python -m scripts.fid` or `scripts.predict`, reaches its first step in seconds
instead of compiling again. JAX keys every entry by the program, its shapes and shardings, the
compiler options, the devices and the versions of jax and jaxlib, so a changed program, model,
batch or installation is simply a miss; nothing is ever served stale. Entries are only written
for programs that took JAX's `jax_persistent_cache_min_compile_time_secs` (1 s) to compile.

The cache holds machine code that JAX runs, so it must be writable by you alone: a folder
others may write to is not used (JAX's own warning: anyone who can write to the cache can run
code in your process). Delete the folder to clear it.
"""

from __future__ import annotations

import os
import stat
import tempfile

import jax
from absl import logging
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from inception_jax.models import hub

AUTO = 'auto'  # the config's and commands' default: JAX's own setting if there is one, else default_dir()


def default_dir() -> str:
  """$INCEPTION_JAX_CACHE/jax, default ~/.cache/inception_jax/jax."""
  return os.path.join(hub.cache_dir(), 'jax')


def enable(setting: str = AUTO) -> str | None:
  """Turns the cache on in `setting`'s folder for this process and returns it, or None when off.

  'auto': the folder JAX was given ($JAX_COMPILATION_CACHE_DIR or jax_compilation_cache_dir), else
  default_dir(). '': off. Else that folder. A folder that cannot be made or written, or that
  others may write to, costs one warning line and the process compiles without a cache.
  """
  path = None
  if setting:
    path = (jax.config.jax_compilation_cache_dir or default_dir()) if setting == AUTO else setting
    remote = '://' in path  # gs://... (JAX reads it with etils.epath): checked by its own permissions
    path = path if remote else os.path.abspath(os.path.expanduser(path))
    problem = None if remote else _unusable(path)
    if problem:
      logging.warning('Compiling without the compilation cache: %s.', problem)
      path = None
  # JAX opens its cache once per process, at the first compile: reset, the next compile opens this one.
  jax_cache.reset_cache()
  jax.config.update('jax_enable_compilation_cache', path is not None)
  if path is not None:
    jax_cache.set_cache_dir(path)
  return path


def _unusable(path: str) -> str | None:
  """Why `path` cannot hold the cache, or None."""
  if os.path.lexists(path) and not os.path.isdir(path):
    return f'{path} is not a folder'
  try:
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.stat(path)
    if info.st_uid != getattr(os, 'getuid', lambda: info.st_uid)() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
      return f'{path} may be written by other users (it would run their code); make it yours alone (chmod go-w)'
    with tempfile.TemporaryFile(dir=path):  # the folder takes a file: permissions, a full or read-only disk
      pass
  except OSError as e:
    return f'{path} cannot be used ({e.strerror or e})'
  return None
