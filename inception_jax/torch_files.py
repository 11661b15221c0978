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

The unpickler resolves only the few globals a state_dict needs (OrderedDict, torch's
tensor-rebuild functions and storage types), so loading a file never runs its code.
"""

from __future__ import annotations

import collections
import json
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


class _StorageType:
  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *unused):
  itemsize = storage.dtype.itemsize
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


def _read_zip(path) -> Any:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickle_name = next((n for n in names if n.endswith('data.pkl')), None)
    if pickle_name is None:
      raise ValueError(f'{path} is a zip file but not a PyTorch checkpoint (no data.pkl inside).')
    prefix = pickle_name[: -len('data.pkl')]
    if f'{prefix}byteorder' in names and archive.read(f'{prefix}byteorder').decode().strip() != 'little':
      raise ValueError(f'{path} was saved on a big-endian machine, which is not supported.')
    storages = {}

    def load_storage(storage_type, key, location, numel):
      if key not in storages:
        storages[key] = np.frombuffer(archive.read(f'{prefix}data/{key}'), dtype=storage_type.dtype)
      return storages[key]

    with archive.open(pickle_name) as f:
      return _Unpickler(f, load_storage).load()


def _read_legacy(path) -> Any:
  with open(path, 'rb') as f:
    if pickle.load(f) != _LEGACY_MAGIC:
      raise ValueError(f'{path} is neither a zip nor a legacy PyTorch file (wrong magic number).')
    pickle.load(f)  # protocol version
    sys_info = pickle.load(f)
    if not sys_info.get('little_endian', True):
      raise ValueError(f'{path} was saved on a big-endian machine, which is not supported.')
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
    for key in pickle.load(f):
      dtype, numel = roots[key]
      count = struct.unpack('<q', f.read(8))[0]
      data = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)
      placeholders[key][:] = data[:numel]
  tensors = {id(cell): _rebuild_tensor(*cell) for cell in pending}
  return _replace_cells(result, tensors)


def _replace_cells(obj, tensors):
  if isinstance(obj, list) and id(obj) in tensors:
    return tensors[id(obj)]
  if isinstance(obj, dict):
    return type(obj)((k, _replace_cells(v, tensors)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_replace_cells(v, tensors) for v in obj)
  return obj


def read_safetensors(path) -> dict[str, np.ndarray]:
  with open(path, 'rb') as f:
    (length,) = struct.unpack('<Q', f.read(8))
    header = json.loads(f.read(length))
    data = f.read()
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    begin, end = info['data_offsets']
    dtype = np.dtype(_SAFETENSORS_DTYPES[info['dtype']])
    out[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(info['shape']).copy()
  return out


def write_safetensors(path, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes `arrays` as a safetensors file (row-major, little-endian)."""
  names = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}
  header, chunks, offset = {}, [], 0
  for name, array in arrays.items():
    array = np.ascontiguousarray(array)
    header[name] = {'dtype': names[array.dtype], 'shape': list(array.shape), 'data_offsets': [offset, offset + array.nbytes]}
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
  and a DataParallel 'module.' prefix on every key is dropped.
  """
  path = os.fspath(path)
  if path.endswith('.safetensors'):
    state = read_safetensors(path)
  elif zipfile.is_zipfile(path):
    state = _read_zip(path)
  else:
    state = _read_legacy(path)
  for wrapper in ('state_dict', 'model', 'model_state_dict'):
    if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
      state = state[wrapper]
  if not isinstance(state, Mapping):
    raise ValueError(f'{path} holds a {type(state).__name__}, not a state_dict.')
  state = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
  if state and all(k.startswith('module.') for k in state):
    state = {k.removeprefix('module.'): v for k, v in state.items()}
  return state
