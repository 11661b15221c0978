"""Reading .npz files (np.savez, np.savez_compressed) that may be damaged or crafted.

np.load trusts an .npz: it allocates the shape a member's .npy header declares before reading
any of the member, ignores data past that shape, and lets zipfile's, zlib's and its own errors
out as KeyError, EOFError, zlib.error or MemoryError. Here, before any data is decompressed, a
member's header is parsed (.npy formats 1.0 to 3.0; a dtype holding Python objects is refused,
so nothing is unpickled) and the size it declares must be the member's size in the archive's
directory. Only stored and deflated members are read (what np.savez writes; zipfile decompresses
bzip2 and lzma without bounding the output), in pieces of at most 1 MiB, into exactly the
declared size. Every failure is an `Error`, a ValueError of one line naming the file and member.
Callers check a header's shape and dtype (and their budget) before reading the data:

    with npz.Archive(path) as archive:
      header = archive.header('sigma')    # shape, dtype, fortran_order, nbytes; no data decompressed
      sigma = archive.read('sigma')        # header.nbytes allocated, no more
      header, stream = archive.stream('arr_0')   # the data piecewise: stream.read(n) gives n bytes
"""

from __future__ import annotations

import ast
import dataclasses
import io
import math
import os
import stat
import struct
import zipfile
import zlib

import numpy as np

MAX_HEADER_BYTES = 10_000  # numpy's default max_header_size
CHUNK_BYTES = 1 << 20
# What zipfile and zlib raise on damaged archives.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    OverflowError,
    struct.error,
    NotImplementedError,
    RuntimeError,
)


class Error(ValueError):
  """A file that is not what it claims to be; the message is one line and names the file."""


def short(value) -> str:
  """`value` for a one-line message: a dtype as numpy prints it, anything else as repr; cut at 60 characters."""
  text = ' '.join(str(value).split()) if isinstance(value, np.dtype) else repr(value)
  return text if len(text) <= 60 else text[:57] + '...'


def open_regular(path) -> io.BufferedReader:
  """`path` opened for reading if it is a regular file: a FIFO would block, a device never end."""
  try:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a FIFO does not wait for a writer
  except OSError as e:
    raise Error(f'cannot read {path}: {e.strerror}.') from None
  mode = os.fstat(fd).st_mode
  if not stat.S_ISREG(mode):
    os.close(fd)
    kinds = [(stat.S_ISDIR, 'a folder'), (stat.S_ISFIFO, 'a FIFO'), (stat.S_ISSOCK, 'a socket')]
    kind = next((name for test, name in kinds if test(mode)), 'a device')
    raise Error(f'{path} is not a regular file ({kind}); only files are read: move it away or give another path.')
  os.set_blocking(fd, True)
  return os.fdopen(fd, 'rb')


@dataclasses.dataclass(frozen=True)
class Header:
  """A member's .npy header: what its data must be."""

  shape: tuple[int, ...]
  dtype: np.dtype
  fortran_order: bool
  nbytes: int


class Stream:
  """A member's data after its header, read in pieces of exactly the length asked for."""

  def __init__(self, file, where: str):
    self._file, self._where = file, where

  def read(self, size: int) -> bytes:
    try:
      data = self._file.read(size)
    except _ZIP_ERRORS as e:
      raise _error(self._where, e) from None
    if len(data) < size:
      raise Error(f'{self._where} ends early.')
    return data

  def skip(self, size: int) -> None:
    for start in range(0, size, CHUNK_BYTES):
      self.read(min(CHUNK_BYTES, size - start))

  def close(self) -> None:
    self._file.close()


def _read_header(stream: Stream, where: str) -> tuple[Header, int]:
  """The .npy header at the start of `stream`, and its length in bytes."""
  prefix = stream.read(8)
  if prefix[:6] != b'\x93NUMPY':
    raise Error(f'{where} is not an .npy array (it does not start with \\x93NUMPY).')
  version = (prefix[6], prefix[7])
  if version not in ((1, 0), (2, 0), (3, 0)):
    raise Error(f'{where} is in .npy format {version[0]}.{version[1]}; formats 1.0, 2.0 and 3.0 are read.')
  size = 2 if version == (1, 0) else 4
  length = int.from_bytes(stream.read(size), 'little')
  if length > MAX_HEADER_BYTES:
    raise Error(f'{where} has an .npy header of {length:,} bytes; at most {MAX_HEADER_BYTES:,} are read.')
  text = stream.read(length)
  try:
    header = ast.literal_eval(text.decode('utf8' if version == (3, 0) else 'latin1'))
  except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):  # MemoryError: nesting too deep
    header = None
  if not isinstance(header, dict) or set(header) != {'descr', 'fortran_order', 'shape'}:
    raise Error(f'{where} has no readable .npy header (a dict of descr, fortran_order and shape).')
  shape, fortran_order = header['shape'], header['fortran_order']
  if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape) and type(fortran_order) is bool):
    raise Error(f'{where} has an .npy header of shape {short(shape)}, fortran_order {short(fortran_order)}.')
  try:
    dtype = np.lib.format.descr_to_dtype(header['descr'])
  except (TypeError, ValueError, KeyError, IndexError, OverflowError):
    raise Error(f'{where} has an .npy header whose dtype {short(header["descr"])} is not one numpy makes.') from None
  if dtype.hasobject:
    raise Error(f'{where} holds Python objects (dtype {short(dtype)}), which only pickle could read; not read.')
  return Header(shape, dtype, fortran_order, math.prod(shape) * dtype.itemsize), 8 + size + length


def _error(where: str, e: Exception) -> Error:
  message = ' '.join(str(e).split())
  return Error(f'cannot read {where}: {type(e).__name__}{": " if message else ""}{message} (damaged, or not an .npz).')


class Archive:
  """An .npz file, opened if it is a regular file and a zip archive. `keys`: its members' names
  without '.npy', as np.load lists them."""

  def __init__(self, path: str):
    self.path, self._file, self._zip = path, None, None
    self._file = open_regular(path)
    try:
      self._zip = zipfile.ZipFile(self._file)
      infos = self._zip.infolist()
    except _ZIP_ERRORS as e:
      self.close()
      raise _error(path, e) from None
    self._members = {}
    for info in infos:
      key = info.filename.removesuffix('.npy')
      if key in self._members:
        self.close()
        raise Error(f'{path} holds two members named {short(key)}; np.savez writes one.')
      self._members[key] = info

  @property
  def keys(self) -> list[str]:
    return list(self._members)

  def stream(self, key: str) -> tuple[Header, Stream]:
    """Member `key`'s header, checked against the member's size, and its data to read."""
    info = self._members.get(key)
    if info is None:
      raise Error(f'{self.path} has no member {short(key)}; it holds {short(sorted(self._members)[:8])}.')
    where = f'{self.path}: member {short(info.filename)}'
    if info.flag_bits & 1:
      raise Error(f'{where} is encrypted; np.savez does not encrypt.')
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
      raise Error(
          f'{where} is compressed with method {info.compress_type}; np.savez stores (method 0) and '
          'np.savez_compressed deflates (8): write the file with one of them.'
      )
    try:
      file = self._zip.open(info)
    except _ZIP_ERRORS as e:
      raise _error(where, e) from None
    stream = Stream(file, where)
    try:
      header, offset = _read_header(stream, where)
      if info.file_size != offset + header.nbytes:
        raise Error(
            f'{where} declares {short(header.dtype)} of shape {short(header.shape)} ({header.nbytes:,} bytes) '
            f'but holds {info.file_size - offset:,} bytes after its header.'
        )
    except BaseException:
      stream.close()
      raise
    return header, stream

  def header(self, key: str) -> Header:
    header, stream = self.stream(key)
    stream.close()
    return header

  def read(self, key: str) -> np.ndarray:
    """Member `key` whole: its header's nbytes allocated, filled a piece at a time."""
    header, stream = self.stream(key)
    data = np.empty(header.nbytes, np.uint8)
    try:
      for start in range(0, header.nbytes, CHUNK_BYTES):
        piece = stream.read(min(CHUNK_BYTES, header.nbytes - start))
        data[start : start + len(piece)] = np.frombuffer(piece, np.uint8)
    finally:
      stream.close()
    try:
      return data.view(header.dtype).reshape(header.shape, order='F' if header.fortran_order else 'C')
    except ValueError as e:
      raise _error(f'{self.path}: member {short(key)}', e) from None

  def close(self) -> None:
    for opened in (self._zip, self._file):
      if opened is not None:
        opened.close()

  __del__ = close

  def __enter__(self) -> Archive:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
