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
functions and storage types; none for the legacy format's header). Whatever is wrong
with a file is a `WeightFileError` (a ValueError) of one line.
"""

from __future__ import annotations

import collections
import json
import math
import os
import pickle
import struct
import zipfile
from typing import Any, Mapping

import ml_dtypes
import numpy as np

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


class _StorageType:

  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *unused):
  itemsize = storage.dtype.itemsize
  size, stride, offset = tuple(map(int, size)), tuple(map(int, stride)), int(offset)
  # as_strided trusts its arguments: keep every element inside the storage.
  last = offset + sum((n - 1) * s for n, s in zip(size, stride) if n > 0)
  if (
      len(size) != len(stride)
      or min(size + stride + (offset,), default=0) < 0
      or (math.prod(size) and last >= storage.size)
      or offset > storage.size
  ):
    raise WeightFileError(f'a tensor of size {size}, stride {stride} at offset {offset} lies outside its storage')
  if not size:
    return storage[offset : offset + 1].reshape(()).copy()
  view = np.lib.stride_tricks.as_strided(storage[offset:], tuple(size), tuple(s * itemsize for s in stride))
  return np.array(view)


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


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, load_storage, rebuild_tensor=_rebuild_tensor):
    super().__init__(file, encoding='utf-8')
    self._load_storage = load_storage
    self._rebuild_tensor = rebuild_tensor

  def find_class(self, module, name):
    if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
      return self._rebuild_tensor
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if (module, name) in _GLOBALS:
      return _GLOBALS[(module, name)]
    raise pickle.UnpicklingError(
        f'{module}.{name} is not part of a plain state_dict, so it is not loaded. '
        'Save the weights with torch.save(model.state_dict(), path), or as safetensors.'
    )

  def persistent_load(self, saved_id):
    if saved_id[0] != 'storage':
      raise pickle.UnpicklingError(f'Unknown persistent id {saved_id[0]!r} in a PyTorch file.')
    return self._load_storage(*saved_id[1:])


class _PlainUnpickler(pickle.Unpickler):
  """For the legacy format's header: plain data only (numbers, strings, lists, dicts)."""

  def find_class(self, module, name):
    raise pickle.UnpicklingError(f'{module}.{name} where plain data was expected')

  def persistent_load(self, saved_id):
    raise pickle.UnpicklingError('a persistent id where plain data was expected')


def _load_plain(f, what: str, expected_type: type) -> Any:
  value = _PlainUnpickler(f).load()
  if not isinstance(value, expected_type):
    raise WeightFileError(f'its {what} is a {type(value).__name__}, not a {expected_type.__name__}')
  return value


def _read_zip(path) -> Any:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickle_name = next((n for n in names if n.endswith('data.pkl')), None)
    if pickle_name is None:
      raise WeightFileError('it is a zip file but not a PyTorch checkpoint (no data.pkl inside)')
    prefix = pickle_name[: -len('data.pkl')]
    if f'{prefix}byteorder' in names and archive.read(f'{prefix}byteorder').decode().strip() != 'little':
      raise WeightFileError('it was saved on a big-endian machine, which is not supported')
    storages = {}

    def load_storage(storage_type, key, location, numel):
      if key not in storages:
        storages[key] = np.frombuffer(archive.read(f'{prefix}data/{key}'), dtype=storage_type.dtype)
      return storages[key]

    with archive.open(pickle_name) as f:
      return _Unpickler(f, load_storage).load()


def _read_legacy(path) -> Any:
  with open(path, 'rb') as f:
    f.seek(len(_LEGACY_HEADER))  # the magic number, checked by load_state_dict
    _load_plain(f, 'protocol version', int)
    sys_info = _load_plain(f, 'system info', dict)
    if not sys_info.get('little_endian', True):
      raise WeightFileError('it was saved on a big-endian machine, which is not supported')
    roots: dict[str, tuple[np.dtype, int]] = {}
    # Storages are read after the pickle; hand out placeholders, fill them in afterwards.
    placeholders: dict[str, np.ndarray] = {}

    def load_storage(storage_type, root_key, location, numel, view_metadata):
      roots.setdefault(root_key, (storage_type.dtype, numel))
      if root_key not in placeholders:
        placeholders[root_key] = np.empty(numel, storage_type.dtype)
      if view_metadata is None:
        return placeholders[root_key]
      view_key, offset, view_size = view_metadata
      return placeholders[root_key][offset : offset + view_size]

    # Tensors copy their storage when rebuilt, so rebuild them after the bytes are in.
    pending = []

    def deferred_rebuild(storage, offset, size, stride, *unused):
      cell = [storage, offset, size, stride]
      pending.append(cell)
      return cell

    result = _Unpickler(f, load_storage, deferred_rebuild).load()
    keys = _load_plain(f, 'list of storage keys', list)
    if sorted(map(str, keys)) != sorted(roots):
      raise WeightFileError('its list of storage keys does not match the tensors it holds')
    for key in keys:
      dtype, numel = roots[key]
      (count,) = struct.unpack('<q', _read_exactly(f, 8))
      if count < numel:
        raise WeightFileError(f'storage {key} holds {count} elements where {numel} are needed')
      placeholders[key][:] = np.frombuffer(_read_exactly(f, numel * dtype.itemsize), dtype=dtype)
      f.seek((count - numel) * dtype.itemsize, os.SEEK_CUR)
  tensors = {id(cell): _rebuild_tensor(*cell) for cell in pending}
  return _replace_cells(result, tensors)


def _read_exactly(f, size: int) -> bytes:
  data = f.read(size)
  if len(data) != size:
    raise WeightFileError('it ends early (truncated?)')
  return data


def _read_torch(path, reader) -> Any:
  try:
    return reader(path)
  except WeightFileError as e:
    raise WeightFileError(f'{path} is not a readable PyTorch state_dict: {e}.') from None
  except (
      pickle.UnpicklingError,
      EOFError,
      OverflowError,
      ValueError,
      TypeError,
      KeyError,
      IndexError,
      AttributeError,
      struct.error,
      zipfile.BadZipFile,
      UnicodeDecodeError,
      MemoryError,
  ) as e:
    raise WeightFileError(
        f'{path} is not a readable PyTorch state_dict: {type(e).__name__}: {e}'.rstrip('.') + '.'
    ) from None


def _replace_cells(obj, tensors):
  if isinstance(obj, list) and id(obj) in tensors:
    return tensors[id(obj)]
  if isinstance(obj, dict):
    return type(obj)((k, _replace_cells(v, tensors)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_replace_cells(v, tensors) for v in obj)
  return obj


def read_safetensors(path) -> dict[str, np.ndarray]:
  """{name: array} from a safetensors file; raises WeightFileError if it is not one."""
  try:
    return _read_safetensors(path)
  except WeightFileError as e:
    raise WeightFileError(f'{path} is not a readable safetensors file: {e}.') from None
  except (ValueError, KeyError, TypeError, struct.error) as e:
    raise WeightFileError(f'{path} is not a readable safetensors file: {type(e).__name__}: {e}.') from None


def _read_safetensors(path) -> dict[str, np.ndarray]:
  with open(path, 'rb') as f:
    (length,) = struct.unpack('<Q', _read_exactly(f, 8))
    if length > os.path.getsize(path) - 8:
      raise WeightFileError(f'its header length {length} runs past the end of the file')
    header = json.loads(_read_exactly(f, length))
    data = f.read()
  if not isinstance(header, dict):
    raise WeightFileError('its header is not a JSON object')
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    if info['dtype'] not in _SAFETENSORS_DTYPES:
      raise WeightFileError(f'{name} has dtype {info["dtype"]!r}; readable: {", ".join(_SAFETENSORS_DTYPES)}')
    dtype = np.dtype(_SAFETENSORS_DTYPES[info['dtype']])
    begin, end = (int(x) for x in info['data_offsets'])
    shape = tuple(int(x) for x in info['shape'])
    if not 0 <= begin <= end <= len(data) or end - begin != math.prod(shape) * dtype.itemsize:
      raise WeightFileError(
          f'{name}: its byte range [{begin}, {end}) does not hold a {info["dtype"]} array of shape {shape}'
      )
    out[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape).copy()
  return out


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
  with open(path, 'wb') as f:
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
    with open(path, 'rb') as f:
      head = f.read(len(_LEGACY_HEADER))
    if head.startswith(_ZIP_HEADER):
      state = _read_torch(path, _read_zip)
    elif head == _LEGACY_HEADER:
      state = _read_torch(path, _read_legacy)
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
  state = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
  if state and all(k.startswith('module.') for k in state):
    state = {k.removeprefix('module.'): v for k, v in state.items()}
  return state
