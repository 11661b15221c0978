"""A user's files: the one way the project writes them, and the lock of a run's folder.

Every file a command or cache writes goes through `atomic`: it is written to a temporary file
beside its path, flushed to disk, given the mode open() would give it (0666 & ~umask), and then
put in place whole, so that no reader ever sees it half-written and a failure leaves what was
there before. Without `overwrite` it never replaces a file: the path is checked before any work
(`check_output`) and the file is put in place by a link, which fails if the path has appeared
since. Only a command's own outputs in its own folder (a run's final_metrics.json) are replaced.
Before a large write (a checkpoint, converted weights), `room_for` says whether it can fit, so
that a full disk is one line rather than a write that fails half-way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import IO

try:
  import fcntl
  import resource
except ImportError:  # Windows: runs are not locked, file sizes not limited
  fcntl = resource = None


def check_output(
    path: str, flag: str, *, overwrite: bool = False, overwrite_flag: str = '', inputs: Sequence[str] = ()
) -> str:
  """`path` as an absolute path once it is known to be writable as a new file (or, with
  `overwrite`, over a file): it is none of `inputs`, it exists only if `overwrite` and is then
  no folder, and its folder exists and can be written. Else ValueError, one line naming `flag` (and
  `overwrite_flag`, the command's way to replace a file, if it has one)."""
  target = os.path.abspath(path)
  folder = os.path.dirname(target)
  for given in inputs:
    if os.path.abspath(given) == target or (
        os.path.exists(given) and os.path.exists(target) and os.path.samefile(given, target)
    ):
      raise ValueError(f'{flag}={path} is also an input; write the output to a new file.')
  if os.path.lexists(target) and not overwrite:
    raise ValueError(
        f'{flag}={path} exists; give a new name'
        + (f' or pass {overwrite_flag} to replace it.' if overwrite_flag else '.')
    )
  if os.path.isdir(target):
    raise ValueError(f'{flag}={path} is a folder; name a file.')
  if not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
    raise ValueError(f'{flag}={path}: {folder} is not a folder this process can write to.')
  return target


def room_for(folder: str, nbytes: int) -> str | None:
  """Why `nbytes` of new files cannot be written into `folder`, or None: more than its disk has
  free, or more than this process may write into one file (ulimit -f). A folder whose disk
  cannot be asked (a remote path) is not checked: the write itself will say."""
  if '://' in folder:
    return None
  needed = nbytes + nbytes // 10 + (1 << 20)  # what Orbax adds: metadata, manifests, the JSON record
  limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource else -1
  if 0 <= limit < needed:  # RLIM_INFINITY: -1 on Linux, 2**63 - 1 on macOS
    return f'it needs about {_mib(needed)}, and this process may write files of at most {_mib(limit)} (ulimit -f)'
  existing = os.path.abspath(folder)
  while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
    existing = os.path.dirname(existing)
  try:
    free = shutil.disk_usage(existing).free
  except OSError:
    return None
  return f'it needs about {_mib(needed)}, and its disk has {_mib(free)} free' if free < needed else None


def _mib(nbytes: int) -> str:
  return f'{nbytes / 2**20:.1f} MiB'


@contextlib.contextmanager
def atomic(path: str, *, overwrite: bool = False, text: bool = False) -> Iterator[IO]:
  """A file to write `path` through: it appears whole when the block ends, and not at all if the
  block raises. Without `overwrite`, FileExistsError if `path` exists by then."""
  target = os.path.abspath(path)
  fd, partial = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f'.{os.path.basename(target)}.', suffix='.partial')
  try:
    with os.fdopen(fd, 'w' if text else 'wb') as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o666 & ~umask)  # mkstemp's is 0600
    if overwrite:
      os.replace(partial, target)
    else:
      _link(partial, target)
  finally:
    if os.path.lexists(partial):
      os.remove(partial)


@contextlib.contextmanager
def atomic_folder(path: str) -> Iterator[str]:
  """A path to write a new folder's contents to (inside a temporary folder beside `path`): it
  appears at `path` whole when the block ends, and not at all if the block raises.
  FileExistsError if `path` exists by then."""
  target = os.path.abspath(path)
  # mkdtemp makes a new folder (never one that was there) that only `inside` is written into.
  temporary = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=f'.{os.path.basename(target)}.', suffix='.partial')
  inside = os.path.join(temporary, os.path.basename(target))
  try:
    yield inside
    if os.path.lexists(target):  # rename() would put a folder in place of an empty one
      raise FileExistsError(errno.EEXIST, 'appeared while it was being written', target)
    os.rename(inside, target)
  except BaseException:
    shutil.rmtree(temporary, ignore_errors=True)  # the folder mkdtemp just made, with what this block wrote
    raise
  os.rmdir(temporary)  # empty after the rename: only ever removed empty


def _link(partial: str, target: str) -> None:
  """Puts `partial` at `target` unless something is there (atomically where the filesystem links)."""
  try:
    os.link(partial, target)
  except FileExistsError:
    raise FileExistsError(errno.EEXIST, 'appeared while it was being written', target) from None
  except OSError:  # no hard links here (some network and FUSE filesystems)
    if os.path.lexists(target):
      raise FileExistsError(errno.EEXIST, 'appeared while it was being written', target) from None
    os.replace(partial, target)


@contextlib.contextmanager
def run_lock(folder: str) -> Iterator[None]:
  """Held while a run uses `folder`: a second run there gets ValueError naming the first one's
  process. The lock file (`.lock`, kept) holds the holder's host and process id; the operating
  system releases the lock when that process ends, however it ends."""
  if fcntl is None or '://' in folder:
    yield
    return
  path = os.path.join(folder, '.lock')
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 200).decode(errors='replace').strip() or 'another process'
      raise ValueError(
          f'{folder} is in use by another run ({holder}); wait for it to end, or give another --workdir.'
      ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f'process {os.getpid()} on {os.uname().nodename}\n'.encode())
    yield
  finally:
    os.close(fd)  # releases the lock
