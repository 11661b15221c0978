"""PyTorch weight files -> {name: numpy array}, without PyTorch.

Reads what `torch.save(model.state_dict(), path)` writes in either of its formats, and
safetensors files:

- zip (torch >= 1.6, `.pth`/`.pt`/`.bin`): `<archive>/data.pkl` pickles the dict; each
  tensor's storage is a persistent id ('storage', StorageType, key, location, numel) whose
  bytes are the zip entry `<archive>/data/<key>`.
- legacy (torch < 1.6, e.g. older torchvision downloads): a pickled magic number, protocol
  version and system info, the pickled dict (persistent ids ('storage', StorageType,
  root_key, location, numel, view_metadata)), the pickled list of storage keys, then each
  storage's bytes behind an 8-byte element count.
- safetensors: an 8-byte header length, a JSON header of {name: dtype, shape,
  data_offsets}, then the bytes.

Nothing in a file runs code: a file must start as one of these formats does before
anything in it is unpickled, and every pickle in it goes through an unpickler that
resolves only the few globals a state_dict needs (OrderedDict, torch's tensor-rebuild
functions and storage types; none for the legacy format's header).

Nor can a file make the reader allocate more than it holds and the tensors it declares
need: every storage is checked against the bytes the file has for it, every tensor against
its storage (a tensor holds no more elements than its storage, so stride 0 cannot blow one
element up), the storages a zip file declares against the size of the file, and all tensors
together too (views of one storage may overlap, so each would otherwise copy all of it; the
same view under two names, as tied weights are, is copied once).

Whatever is wrong with a file is a `WeightFileError` (a ValueError) of one line.
"""

from __future__ import annotations

import collections
import io
import json
import math
import operator
import os
import pickle
import struct
import zipfile
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from inception_jax import files

_STORAGE_DTYPES = {
    'DoubleStorage': np.float64,
    'FloatStorage': np.float32,
    'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16,
    'LongStorage': np.int64,
    'IntStorage': np.int32,
    'ShortStorage': np.int16,
    'CharStorage': np.int8,
    'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}

_SAFETENSORS_DTYPES = {
    'F64': np.float64,
    'F32': np.float32,
    'F16': np.float16,
    'BF16': ml_dtypes.bfloat16,
    'I64': np.int64,
    'I32': np.int32,
    'I16': np.int16,
    'I8': np.int8,
    'U8': np.uint8,
    'BOOL': np.bool_,
}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# torch.save's legacy format opens with the magic number pickled at protocol 2.
_LEGACY_HEADER = pickle.dumps(_LEGACY_MAGIC, protocol=2)
_ZIP_HEADER = b'PK\x03\x04'


class WeightFileError(ValueError):
  """A weight file that is not a plain PyTorch state_dict or safetensors file, or is damaged."""


# Immutable, so that a pickle's BUILD cannot change one.
_StorageType = collections.namedtuple('_StorageType', ['name', 'dtype'])


class _Budget:
  """Bytes a file may make the reader allocate for one purpose: no more than the file holds."""

  def __init__(self, limit: int, what: str):
    self.limit, self.left, self.what = limit, limit, what

  def take(self, nbytes: int) -> None:
    self.left -= nbytes
    if self.left < 0:
      raise WeightFileError(f'{self.what} need more bytes than the file holds ({self.limit})')


def _tensor_view(storage: np.ndarray, offset, size, stride) -> np.ndarray:
  """A tensor as a read-only view of its storage, once its elements are known to lie inside it."""
  size, stride, offset = tuple(map(operator.index, size)), tuple(map(operator.index, stride)), operator.index(offset)
  numel = math.prod(size)
  # as_strided trusts its arguments: keep every element inside the storage.
  end = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if numel else offset
  if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0 or end > storage.size:
    raise WeightFileError(f'a tensor of size {size}, stride {stride} at offset {offset} lies outside its storage')
  # Repeating elements (stride 0) could make a tensor of any size out of one element.
  if numel > storage.size:
    raise WeightFileError(f'a tensor of size {size} holds {numel} elements, more than its storage ({storage.size})')
  strides = tuple(s * storage.itemsize for s in stride)
  return np.lib.stride_tricks.as_strided(storage[offset:], size, strides, writeable=False)


def _rebuild_parameter(data, *unused):
  return data


def _rebuild_from_type(func, new_type, args, state):
  return func(*args)


_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    ('torch._tensor', '_rebuild_from_type_v2'): _rebuild_from_type,
    ('torch.nn.parameter', 'Parameter'): None,  # only ever the `new_type` of _rebuild_from_type_v2
    ('torch', 'Tensor'): None,
}


def _refuse_bytearray(unpickler):
  raise pickle.UnpicklingError('a bytearray, which no state_dict holds')


class _SafeUnpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """Python's own unpickler, which allocates only what the file holds (bar a bytearray, refused).

  Not the C one (pickle.Unpickler): that sizes its memo by the largest index in the file and
  allocates a bytes object as long as the file says before reading it, so a few bytes can make
  it write gigabytes.
  """

  dispatch = {**pickle._Unpickler.dispatch, pickle.BYTEARRAY8[0]: _refuse_bytearray}  # pylint: disable=protected-access


class _Unpickler(_SafeUnpickler):
  """Unpickles a state_dict; its tensors may take `tensor_bytes` (None: not rebuilt)."""

  def __init__(self, file, load_storage, tensor_bytes: _Budget | None):
    super().__init__(file, encoding='utf-8')
    self._load_storage = load_storage
    self._tensor_bytes = tensor_bytes
    self._tensors = {}  # (address, dtype, shape, strides): array

  def _rebuild_tensor(self, storage, offset, size, stride, *unused):
    if self._tensor_bytes is None:
      return None
    view = _tensor_view(storage, offset, size, stride)
    # Tied weights are one storage under two names, each with a tensor of its own: copy it once.
    key = (view.__array_interface__['data'][0], view.dtype, view.shape, view.strides)
    if key not in self._tensors:
      self._tensor_bytes.take(view.nbytes)
      self._tensors[key] = view.copy()
    return self._tensors[key]

  def find_class(self, module, name):
    if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
      return self._rebuild_tensor
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _StorageType(name, np.dtype(_STORAGE_DTYPES[name]))
    if (module, name) in _GLOBALS:
      return _GLOBALS[(module, name)]
    raise pickle.UnpicklingError(
        f'{module}.{name} is not part of a plain state_dict, so it is not loaded. '
        'Save the weights with torch.save(model.state_dict(), path), or as safetensors.'
    )

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) > 1 and pid[0] == 'storage' and isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f'a persistent id that is not a storage: {pid!r}')
    return self._load_storage(*pid[1:])


class _PlainUnpickler(_SafeUnpickler):
  """For the legacy format's header: plain data only (numbers, strings, lists, dicts)."""

  def find_class(self, module, name):
    raise pickle.UnpicklingError(f'{module}.{name} where plain data was expected')

  def persistent_load(self, pid):
    raise pickle.UnpicklingError('a persistent id where plain data was expected')


def _load_plain(f, what: str, expected_type: type) -> Any:
  value = _PlainUnpickler(f).load()
  if not isinstance(value, expected_type):
    raise WeightFileError(f'its {what} is a {type(value).__name__}, not a {expected_type.__name__}')
  return value


def _read_zip(path) -> Any:
  file_size = os.path.getsize(path)
  # torch.save stores the members uncompressed: together they hold no more bytes than the file.
  member_bytes = _Budget(file_size, 'its zip members')
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickle_name = next((n for n in names if n.endswith('data.pkl')), None)
    if pickle_name is None:
      raise WeightFileError('it is a zip file but not a PyTorch checkpoint (no data.pkl inside)')
    prefix = pickle_name[: -len('data.pkl')]

    def read(name: str, size: int | None = None) -> bytes:
      """The member `name`, once known to hold `size` bytes (if given) and to fit in the budget."""
      info = archive.getinfo(name)
      if size is not None and info.file_size != size:
        raise WeightFileError(f'its member {name!r} holds {info.file_size} bytes where its storage needs {size}')
      member_bytes.take(info.file_size)
      with archive.open(info) as f:
        return _read_exactly(f, info.file_size)

    if f'{prefix}byteorder' in names and read(f'{prefix}byteorder').decode().strip() != 'little':
      raise WeightFileError('it was saved on a big-endian machine, which is not supported')
    storages = {}

    def load_storage(storage_type, key, location, numel):
      if key not in storages:
        size = operator.index(numel) * storage_type.dtype.itemsize
        storages[key] = np.frombuffer(read(f'{prefix}data/{key}', size), dtype=storage_type.dtype)
      return storages[key]

    return _Unpickler(io.BytesIO(read(pickle_name)), load_storage, _Budget(file_size, 'its tensors')).load()


def _read_legacy(path) -> Any:
  with open(path, 'rb') as file:
    data = file.read()
  f = io.BytesIO(data)
  f.seek(len(_LEGACY_HEADER))  # the magic number, checked by load_state_dict
  _load_plain(f, 'protocol version', int)
  sys_info = _load_plain(f, 'system info', dict)
  if not sys_info.get('little_endian', True):
    raise WeightFileError('it was saved on a big-endian machine, which is not supported')
  # The storages' bytes follow the pickle that uses them. Unpickle it once without tensors to
  # learn its storages and where it ends, read those, then unpickle it again with them.
  start = f.tell()
  declared: dict[str, tuple[np.dtype, int]] = {}

  def declare(storage_type, root_key, location, numel, view_metadata):
    declared.setdefault(root_key, (storage_type.dtype, operator.index(numel)))

  _Unpickler(f, declare, tensor_bytes=None).load()
  keys = _load_plain(f, 'list of storage keys', list)
  if sorted(keys) != sorted(declared):
    raise WeightFileError('its list of storage keys does not match the tensors it holds')
  storages = {}
  for key in keys:
    dtype, numel = declared[key]
    (count,) = struct.unpack('<q', _read_exactly(f, 8))
    if not 0 <= numel <= count:
      raise WeightFileError(f'storage {key!r} holds {count} elements where {numel} are needed')
    if f.tell() + count * dtype.itemsize > len(data):
      raise WeightFileError('it ends early (truncated?)')
    storages[key] = np.frombuffer(data, dtype, count=numel, offset=f.tell())
    f.seek(count * dtype.itemsize, os.SEEK_CUR)

  def load_storage(storage_type, root_key, location, numel, view_metadata):
    if view_metadata is None:
      return storages[root_key]
    view_key, offset, size = view_metadata
    offset, size, storage = operator.index(offset), operator.index(size), storages[root_key]
    if not 0 <= offset <= offset + size <= storage.size:
      raise WeightFileError(f'a view of storage {root_key!r} lies outside it')
    return storage[offset : offset + size]

  f.seek(start)
  return _Unpickler(f, load_storage, _Budget(len(data), 'its tensors')).load()


def _read_exactly(f, size: int) -> bytes:
  data = f.read(size)
  if len(data) != size:
    raise WeightFileError('it ends early (truncated?)')
  return data


def _read(path: str, what: str, reader) -> Any:
  """reader(path), with whatever is wrong with the file as a WeightFileError of one line."""
  try:
    return reader(path)
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, OSError) and e.strerror:  # not read at all (permissions, I/O): no verdict on its contents
      raise WeightFileError(f'cannot read {path}: {e.strerror}.') from None
    # Damaged files make the parsers raise all sorts: BadZipFile, EOFError, RecursionError,
    # OverflowError, NotImplementedError (a zip compression method), zlib.error, ...
    detail = str(e) if isinstance(e, WeightFileError) else f'{type(e).__name__}: {e}'
    if len(detail) > 300:
      detail = detail[:300] + '...'
    # Names from the file may hold line breaks or terminal escapes: show those as escapes.
    detail = ''.join(c if c.isprintable() else repr(c)[1:-1] for c in detail)
    raise WeightFileError(f'{path} is not a readable {what}: {detail.rstrip(".")}.') from None


def _head(path: str, size: int) -> bytes:
  with open(path, 'rb') as f:
    return f.read(size)


def read_safetensors(path) -> dict[str, np.ndarray]:
  """{name: array} from a safetensors file; raises WeightFileError if it is not one."""
  return _read(os.fspath(path), 'safetensors file', _read_safetensors)


def _read_safetensors(path) -> dict[str, np.ndarray]:
  with open(path, 'rb') as f:
    data = f.read()
  if len(data) < 8:
    raise WeightFileError('it ends early (truncated?)')
  (length,) = struct.unpack_from('<Q', data)
  if length > len(data) - 8:
    raise WeightFileError(f'its header length {length} runs past the end of the file')
  header = json.loads(data[8 : 8 + length])
  if not isinstance(header, dict):
    raise WeightFileError('its header is not a JSON object')
  start = 8 + length
  tensors = {}  # name: (begin, end, dtype, shape)
  for name, info in header.items():
    if name == '__metadata__':
      continue
    if not isinstance(info, dict) or not isinstance(info.get('dtype'), str) or info['dtype'] not in _SAFETENSORS_DTYPES:
      raise WeightFileError(f'{name!r} is not a tensor of one of the dtypes {", ".join(_SAFETENSORS_DTYPES)}')
    dtype = np.dtype(_SAFETENSORS_DTYPES[info['dtype']])
    shape, offsets = info.get('shape'), info.get('data_offsets')
    if not _whole_numbers(shape) or not _whole_numbers(offsets) or len(offsets) != 2:
      raise WeightFileError(f'{name!r}: its shape and data_offsets are not lists of whole numbers')
    begin, end = offsets
    if not begin <= end <= len(data) - start or end - begin != math.prod(shape) * dtype.itemsize:
      raise WeightFileError(f'{name!r}: its bytes [{begin}, {end}) are not a {info["dtype"]} array of shape {shape}')
    tensors[name] = begin, end, dtype, shape
  # No two tensors share bytes, so together they take no more than the file holds.
  spans = sorted((begin, end, name) for name, (begin, end, *_) in tensors.items())
  for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
    if begin < end:
      raise WeightFileError(f'{first!r} and {second!r} share bytes')
  return {
      name: np.frombuffer(data, dtype, math.prod(shape), start + begin).reshape(shape).copy()
      for name, (begin, _, dtype, shape) in tensors.items()
  }


def _whole_numbers(value) -> bool:
  return isinstance(value, list) and all(type(x) is int and x >= 0 for x in value)


def write_safetensors(path, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes `arrays` as a safetensors file (row-major, little-endian)."""
  names = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}
  header, chunks, offset = {}, [], 0
  for name, array in arrays.items():
    array = np.ascontiguousarray(array)
    header[name] = {
        'dtype': names[array.dtype],
        'shape': list(array.shape),
        'data_offsets': [offset, offset + array.nbytes],
    }
    chunks.append(array.tobytes())
    offset += array.nbytes
  encoded = json.dumps(header).encode()
  encoded += b' ' * (-len(encoded) % 8)  # the format aligns the data to 8 bytes
  with files.atomic(os.fspath(path)) as f:
    f.write(struct.pack('<Q', len(encoded)))
    f.write(encoded)
    for chunk in chunks:
      f.write(chunk)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch state_dict (.pth/.pt/.bin, zip or legacy format) or a .safetensors file.

  A checkpoint that wraps the state_dict ({'state_dict': ...}, {'model': ...}) is unwrapped,
  and a DataParallel 'module.' prefix on every key is dropped. A file that is none of
  these formats, or a damaged one, raises WeightFileError before anything else is read.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise WeightFileError(f'{path}: no such file.')
  if path.endswith('.safetensors'):
    state = read_safetensors(path)
  else:
    head = _read(path, 'PyTorch state_dict', lambda p: _head(p, len(_LEGACY_HEADER)))
    if head.startswith(_ZIP_HEADER):
      state = _read(path, 'PyTorch state_dict', _read_zip)
    elif head == _LEGACY_HEADER:
      state = _read(path, 'PyTorch state_dict', _read_legacy)
    else:
      raise WeightFileError(
          f'{path} is not a PyTorch weight file (neither torch.save format starts this way) nor a .safetensors '
          'file; nothing in it was read. Save the weights with torch.save(model.state_dict(), path), or as safetensors.'
      )
  for wrapper in ('state_dict', 'model', 'model_state_dict'):
    if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
      state = state[wrapper]
  if not isinstance(state, Mapping):
    raise WeightFileError(f'{path} holds a {type(state).__name__}, not a state_dict.')
  state = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, np.ndarray)}
  if state and all(k.startswith('module.') for k in state):
    state = {k.removeprefix('module.'): v for k, v in state.items()}
  return state
