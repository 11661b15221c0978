"""Reading PyTorch weight files without PyTorch, the convert_weights script, load_pretrained."""

import collections
import io
import os
import pickle
import struct
import subprocess
import sys
import tracemalloc
import zipfile

import jax
import numpy as np
import pytest
import torch

import conftest
from inception_jax import models, torch_files
from inception_jax.models import convert
from scripts import convert_weights
from scripts.torch_refs import numpy_state_dict
from scripts.torch_refs import torchvision_googlenet as tv_googlenet
from scripts.torch_refs import torchvision_inception as tv_inception


def awkward_state_dict():
  base = torch.randn(6, 5)
  return collections.OrderedDict(
      [
          ('conv.weight', torch.randn(4, 3, 2, 2)),
          ('transposed', base.t()),  # a strided view
          ('rows', base[2:]),  # an offset view sharing the storage above
          ('scalar', torch.tensor(3.5)),
          ('bn.num_batches_tracked', torch.tensor(7)),
          ('half', torch.randn(3).half()),
          ('bfloat', torch.randn(3).bfloat16()),
          ('parameter', torch.nn.Parameter(torch.randn(2))),
      ]
  )


@pytest.mark.parametrize('zip_format', [True, False], ids=['zip', 'legacy'])
def test_reads_both_torch_save_formats_exactly(tmp_path, zip_format):
  state = awkward_state_dict()
  path = tmp_path / 'weights.pth'
  torch.save(state, path, _use_new_zipfile_serialization=zip_format)
  loaded = torch_files.load_state_dict(path)
  assert list(loaded) == list(state)
  for key, tensor in state.items():
    expected = tensor.detach().float().numpy() if tensor.dtype == torch.bfloat16 else tensor.detach().numpy()
    np.testing.assert_array_equal(loaded[key].astype(expected.dtype), expected, err_msg=key)
    assert loaded[key].shape == tuple(tensor.shape)
  assert loaded['half'].dtype == np.float16 and loaded['bn.num_batches_tracked'].dtype == np.int64


def test_unwraps_checkpoints_and_reads_safetensors(tmp_path):
  torch.save({'state_dict': {'module.fc.weight': torch.ones(2, 3)}, 'epoch': 3}, tmp_path / 'checkpoint.pt')
  assert list(torch_files.load_state_dict(tmp_path / 'checkpoint.pt')) == ['fc.weight']
  arrays = {'a': np.arange(6, dtype=np.float32).reshape(2, 3), 'b': np.array([1, 2], np.int64)}
  torch_files.write_safetensors(tmp_path / 'model.safetensors', arrays)
  loaded = torch_files.load_state_dict(tmp_path / 'model.safetensors')
  for key, value in arrays.items():
    np.testing.assert_array_equal(loaded[key], value)
    assert loaded[key].dtype == value.dtype


class Hostile:
  """Unpickling this runs a shell command that creates the file `marker`."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


def hostile_files(tmp_path, marker):
  """Every form a weight file with code in it can take, by name."""
  evil = pickle.dumps(Hostile(marker), protocol=2)
  empty_legacy = io.BytesIO()
  torch.save({}, empty_legacy, _use_new_zipfile_serialization=False)
  legacy = empty_legacy.getvalue()
  magic = pickle.dumps(torch_files._LEGACY_MAGIC, protocol=2)
  protocol = pickle.dumps(1001, protocol=2)
  assert legacy.startswith(magic + protocol) and legacy.endswith(pickle.dumps([], protocol=2))
  forms = {
      'bare_pickle.pth': evil,
      'legacy_magic.pth': evil + legacy,
      'legacy_protocol.pth': magic + evil + legacy[len(magic) + len(protocol) :],
      'legacy_system_info.pth': magic + protocol + evil + pickle.dumps({}, protocol=2) + pickle.dumps([], protocol=2),
      'legacy_state_dict.pth': legacy[: -2 * len(pickle.dumps([], protocol=2))] + evil + pickle.dumps([], protocol=2),
      'legacy_storage_keys.pth': legacy[: -len(pickle.dumps([], protocol=2))] + evil,
  }
  for name, content in forms.items():
    (tmp_path / name).write_bytes(content)
  torch.save({'x': Hostile(marker)}, tmp_path / 'zip_state_dict.pth')
  return sorted(forms) + ['zip_state_dict.pth']


def test_no_weight_file_can_run_code(tmp_path):
  marker = tmp_path / 'code_ran'
  names = hostile_files(tmp_path, marker)
  for name in names:
    with pytest.raises(torch_files.WeightFileError) as error:
      torch_files.load_state_dict(tmp_path / name)
    message = str(error.value)
    assert name in message and '\n' not in message, message
    assert not marker.exists(), f'{name} ran its code'
  # The same files through the script: one line on stderr, exit status 1, no traceback.
  for name in ('bare_pickle.pth', 'legacy_system_info.pth', 'zip_state_dict.pth'):
    run = subprocess.run(
        [
            sys.executable,
            '-m',
            'scripts.convert_weights',
            '--model=inception_v3_fid',
            tmp_path / name,
            tmp_path / 'out',
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and run.stderr.count('\n') == 1 and run.stderr.startswith('error: '), run.stderr
  assert not marker.exists()


def test_damaged_or_foreign_files_are_refused_in_one_line(tmp_path):
  torch.save(awkward_state_dict(), tmp_path / 'zip.pth')
  torch.save(awkward_state_dict(), tmp_path / 'legacy.pth', _use_new_zipfile_serialization=False)
  torch_files.write_safetensors(tmp_path / 'good.safetensors', {'a': np.ones(3, np.float32)})
  files = {
      'empty.pth': b'',
      'garbage.pth': os.urandom(1000),
      'truncated_zip.pth': (tmp_path / 'zip.pth').read_bytes()[:700],
      'truncated_legacy.pth': (tmp_path / 'legacy.pth').read_bytes()[:-20],
      'truncated.safetensors': (tmp_path / 'good.safetensors').read_bytes()[:-4],
      'garbage.safetensors': os.urandom(100),
  }
  for name, content in files.items():
    (tmp_path / name).write_bytes(content)
    with pytest.raises(torch_files.WeightFileError, match=name) as error:
      torch_files.load_state_dict(tmp_path / name)
    assert '\n' not in str(error.value)
  # A pickle that is not a state_dict: refused, and the globals it names are not imported.
  torch.save({'x': collections.Counter()}, tmp_path / 'odd.pth')
  with pytest.raises(torch_files.WeightFileError, match='collections.Counter is not part of a plain state_dict'):
    torch_files.load_state_dict(tmp_path / 'odd.pth')
  # A tensor whose strides or offset reach outside its storage (as_strided would read other memory).
  storage = np.zeros(4, np.float32)
  for offset, size, stride in ((0, (4,), (400,)), (3, (2,), (1,)), (-1, (1,), (1,)), (0, (2, 2), (2,))):
    with pytest.raises(torch_files.WeightFileError, match='outside its storage'):
      torch_files._tensor_view(storage, offset, size, stride)


def refused(path) -> str:
  """load_state_dict's error for `path`, checked to be a WeightFileError of one line that names the file."""
  with pytest.raises(torch_files.WeightFileError) as error:
    torch_files.load_state_dict(path)
  message = str(error.value)
  assert str(path) in message and '\n' not in message, message
  return message


def peak_bytes(function) -> int:
  """The most memory Python objects and numpy arrays held at once while `function` ran."""
  tracemalloc.start()
  try:
    function()
  except torch_files.WeightFileError:
    pass
  finally:
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
  return peak


def saved(state, zip_format=True) -> bytes:
  buffer = io.BytesIO()
  torch.save(state, buffer, _use_new_zipfile_serialization=zip_format)
  return buffer.getvalue()


def rezipped(content: bytes, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
  """A torch zip file with the members whose names end in a key of `members` replaced."""
  buffer = io.BytesIO()
  with zipfile.ZipFile(io.BytesIO(content)) as old, zipfile.ZipFile(buffer, 'w', compression) as new:
    for name in old.namelist():
      replacement = [v for k, v in members.items() if name.endswith(k)]
      new.writestr(name, replacement[0] if replacement else old.read(name))
  return buffer.getvalue()


def legacy_file(state_pickle: bytes, keys=()) -> bytes:
  """A legacy torch.save file around a hand-made state_dict pickle."""
  header = saved({}, zip_format=False)[: -2 * len(pickle.dumps([], protocol=2))]
  return header + state_pickle + pickle.dumps(list(keys), protocol=2)


@pytest.mark.parametrize('name', ['weights.pth', 'weights.safetensors'])
def test_a_file_that_cannot_be_opened_is_one_line_naming_the_cause(tmp_path, monkeypatch, name):
  # Issue 30, finding 14: an unreadable .pth was a PermissionError traceback. The machine runs as root:
  # the error is injected where the file is opened.
  path = tmp_path / name
  torch.save({'a': torch.ones(2)}, path)

  def denied(file, *args, **kwargs):
    raise PermissionError(13, 'Permission denied', str(file))

  monkeypatch.setattr(torch_files, 'open', denied, raising=False)
  with pytest.raises(torch_files.WeightFileError, match=rf'^cannot read {path}: Permission denied\.$'):
    torch_files.load_state_dict(path)


@pytest.mark.parametrize('zip_format', [True, False], ids=['zip', 'legacy'])
def test_a_tensor_holds_no_more_elements_than_its_storage(tmp_path, zip_format):
  # Issue #22: stride 0 passed the bounds check, so a file of a few hundred bytes made a 40 MB tensor.
  path = tmp_path / 'expanded.pth'
  path.write_bytes(saved({'w': torch.zeros(1).expand(10_000_000)}, zip_format))
  assert path.stat().st_size < 2000
  assert 'holds 10000000 elements' in refused(path)
  assert peak_bytes(lambda: torch_files.load_state_dict(path)) < 1 << 20


@pytest.mark.parametrize('zip_format', [True, False], ids=['zip', 'legacy'])
def test_a_storage_is_no_larger_than_its_bytes_in_the_file(tmp_path, zip_format):
  # A storage of 2**28 floats (1 GiB) declared for 4 bytes: refused before anything is allocated.
  content = saved({'w': torch.zeros(1)}, zip_format)
  state_pickle = zipfile.ZipFile(io.BytesIO(content)).read('archive/data.pkl') if zip_format else content
  declared = b'cpuq\x06K\x01'  # numel 1, after the location
  assert state_pickle.count(declared) == 1
  state_pickle = state_pickle.replace(declared, b'cpuq\x06J' + struct.pack('<i', 1 << 28))
  huge = rezipped(content, {'data.pkl': state_pickle}) if zip_format else state_pickle
  (tmp_path / 'huge.pth').write_bytes(huge)
  message = refused(tmp_path / 'huge.pth')
  assert '268435456 are needed' in message or f'needs {4 << 28}' in message, message
  assert peak_bytes(lambda: torch_files.load_state_dict(tmp_path / 'huge.pth')) < 1 << 20


def test_zip_members_are_checked_before_they_are_read(tmp_path):
  # Issue #22: zip members were read whole, however large. Here 16 MB of zeros, deflated to 16 kB.
  zeros = bytes(16 << 20)
  files = {
      # A member larger than the storage the pickle declares for it.
      'oversized.pth': rezipped(saved({'w': torch.zeros(1)}), {'data/0': zeros}, zipfile.ZIP_DEFLATED),
      # A storage and member that agree, but need a thousand times the bytes of the file.
      'bomb.pth': rezipped(saved({'w': torch.zeros(4 << 20)}), {}, zipfile.ZIP_DEFLATED),
  }
  for name, content in files.items():
    path = tmp_path / name
    path.write_bytes(content)
    assert path.stat().st_size < 100_000
    message = refused(path)
    assert 'bytes' in message, message
    assert peak_bytes(lambda: torch_files.load_state_dict(path)) < 1 << 20, name


@pytest.mark.parametrize('zip_format', [True, False], ids=['zip', 'legacy'])
def test_overlapping_views_make_no_more_bytes_than_the_file_holds(tmp_path, zip_format):
  # 40 views of one 1 MB storage would make 40 MB of tensors out of a 1 MB file.
  base = torch.zeros(250_000)
  path = tmp_path / 'views.pth'
  path.write_bytes(saved({f'v{i}': base[i:] for i in range(40)}, zip_format))
  assert 'more bytes than the file holds' in refused(path)
  assert peak_bytes(lambda: torch_files.load_state_dict(path)) < 3 << 20


@pytest.mark.parametrize('zip_format', [True, False], ids=['zip', 'legacy'])
def test_tied_weights_are_read_once(tmp_path, zip_format):
  # state_dict() detaches each name's tensor: one storage, two tensors, twice the bytes of the file if copied twice.
  embedding, head = torch.nn.Embedding(1000, 64), torch.nn.Linear(64, 1000, bias=False)
  head.weight = embedding.weight
  path = tmp_path / 'tied.pth'
  path.write_bytes(saved(torch.nn.ModuleDict({'embedding': embedding, 'head': head}).state_dict(), zip_format))
  loaded = torch_files.load_state_dict(path)
  assert list(loaded) == ['embedding.weight', 'head.weight']
  np.testing.assert_array_equal(loaded['head.weight'], embedding.weight.detach().numpy())
  assert loaded['head.weight'] is loaded['embedding.weight']


@pytest.mark.parametrize(
    'opcodes',
    [b'r\x00\x00\x00\x01', b'B\x00\x00\x00\x40', b'\x96' + struct.pack('<Q', 1 << 28)],
    ids=['memo_index', 'bytes_length', 'bytearray_length'],
)
@pytest.mark.parametrize('zip_format', [True, False], ids=['zip', 'legacy'])
def test_numbers_in_a_pickle_allocate_nothing(tmp_path, opcodes, zip_format):
  # pickle's C unpickler sizes its memo by the largest index (2**24 here: 256 MB, written through)
  # and allocates a bytes object as long as declared (1 GiB here) before reading it; both
  # unpicklers allocate a bytearray as long as declared (256 MB here; the Python one zeroes it).
  state_pickle = b'\x80\x02}' + opcodes + b'.'
  if zip_format:
    content = rezipped(saved({}), {'data.pkl': state_pickle})
  else:
    content = legacy_file(state_pickle)
  path = tmp_path / 'numbers.pth'
  path.write_bytes(content)
  assert peak_bytes(lambda: torch_files.load_state_dict(path)) < 1 << 20
  if opcodes.startswith(b'r'):
    assert torch_files.load_state_dict(path) == {}
  else:
    refused(path)


def test_a_self_referencing_legacy_pickle_reads(tmp_path):
  # Issue #22: this raised RecursionError.
  state = {'w': torch.ones(2)}
  state['self'] = state
  (tmp_path / 'loop.pth').write_bytes(saved(state, zip_format=False))
  loaded = torch_files.load_state_dict(tmp_path / 'loop.pth')
  assert list(loaded) == ['w'] and loaded['w'].tolist() == [1, 1]


@pytest.mark.parametrize(
    'header',
    [
        '{"a": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]}}',
        '{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": ' + '[' * 100_000 + ']' * 100_000 + '}}',
        '{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [1], '
        '"data_offsets": [0, 4]}}',
        '{"a\\nb": {"dtype": "X", "shape": [1], "data_offsets": [0, 4]}}',
        '{"a": {"dtype": "F32", "shape": [-1, -1], "data_offsets": [0, 4]}}',
        '{"a": {"dtype": "F32", "shape": [true], "data_offsets": [0, 4]}}',
        '{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.5]}}',
        '{"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}',
        '{"a": [], "__metadata__": 3}',
        '[1]',
    ],
    ids=['huge_number', 'deep', 'overlapping', 'newline', 'negative', 'bool', 'float', 'list', 'not_a_dict', 'array'],
)
def test_odd_safetensors_headers_are_refused_in_one_line(tmp_path, header):
  # Issue #22: [1e400] raised OverflowError and deep nesting RecursionError; two names on the same bytes
  # doubled them, and a name's newline reached the message.
  encoded = header.encode()
  path = tmp_path / 'odd.safetensors'
  path.write_bytes(struct.pack('<Q', len(encoded)) + encoded + bytes(4))
  refused(path)


def test_reading_needs_no_torch(tmp_path):
  torch.save(awkward_state_dict(), tmp_path / 'weights.pth')
  code = (
      "import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
      'from inception_jax import torch_files\n'
      f"print(sorted(torch_files.load_state_dict({str(tmp_path / 'weights.pth')!r})))"
  )
  out = subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True).stdout
  assert 'conv.weight' in out


run_script = conftest.script_runner(convert_weights)


def test_script_converts_torchvision_googlenet_and_load_pretrained_restores_it(tmp_path, capsys):
  torch.manual_seed(0)
  state = tv_googlenet.GoogLeNet(aux_logits=True).state_dict()  # torchvision's file has (untrained) aux heads
  torch.save(state, tmp_path / 'googlenet.pth')
  assert run_script('--source=torchvision', '--model=googlenet', tmp_path / 'googlenet.pth', tmp_path / 'ckpt') == 0
  out = capsys.readouterr().out
  assert (
      'wrote' in out and 'unexpected (ignored)' not in out
  )  # like torchvision's builder, the untrained heads are left out

  model, variables = models.load_pretrained('googlenet', tmp_path / 'ckpt')
  assert (model.layout, model.transform_input, model.aux_logits, model.drop_rate) == ('torchvision', True, False, 0.2)
  assert 'aux1' not in variables['params']
  expected = state['inception4b.branch3.1.conv.weight'].numpy().transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(variables['params']['inception4b']['branch5x5']['conv']['kernel'], expected)
  np.testing.assert_array_equal(variables['batch_stats']['conv1']['bn']['var'], state['conv1.bn.running_var'].numpy())
  np.testing.assert_array_equal(variables['params']['fc']['kernel'], state['fc.weight'].numpy().T)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(variables))

  with pytest.raises(ValueError, match="holds weights for 'googlenet', not 'inception_v3'"):
    models.load_pretrained('inception_v3', tmp_path / 'ckpt')
  # The file itself loads too, converted on the fly into the same model and variables.
  direct_model, direct = models.load_pretrained('googlenet', tmp_path / 'googlenet.pth')
  assert direct_model == model
  jax.tree.map(np.testing.assert_array_equal, direct, variables)


def test_script_reports_missing_and_unexpected_keys(tmp_path, capsys):
  state = numpy_state_dict(tv_googlenet.GoogLeNet(aux_logits=False))
  del state['inception5b.branch4.1.bn.running_mean']
  state['head.weight'] = np.zeros((2, 2), np.float32)
  torch_files.write_safetensors(tmp_path / 'broken.safetensors', state)
  assert (
      run_script('--source=torchvision', '--model=googlenet', tmp_path / 'broken.safetensors', tmp_path / 'ckpt') == 1
  )
  captured = capsys.readouterr()
  assert 'unexpected (ignored): head.weight' in captured.out
  assert 'missing: batch_stats/inception5b/branch_pool/bn/mean' in captured.out
  assert 'nothing written' in captured.err and not os.path.exists(tmp_path / 'ckpt')


def test_timm_inception_v3_from_safetensors(tmp_path):
  state = numpy_state_dict(tv_inception.Inception3(aux_logits=True, num_classes=10))
  torch_files.write_safetensors(tmp_path / 'model.safetensors', state)
  assert run_script('--source=timm', '--model=inception_v3', tmp_path / 'model.safetensors', tmp_path / 'ckpt') == 0
  model, variables = models.load_pretrained('inception_v3', tmp_path / 'ckpt', drop_rate=0.3)
  # timm feeds [-1, 1] inputs itself: no transform_input; classes and aux head from the file.
  assert (model.transform_input, model.num_classes, model.aux_logits, model.drop_rate) == (False, 10, True, 0.3)
  np.testing.assert_array_equal(
      variables['params']['AuxLogits']['conv1']['conv']['kernel'],
      state['AuxLogits.conv1.conv.weight'].transpose(2, 3, 1, 0),
  )


def test_unknown_model_or_source_is_named():
  with pytest.raises(ValueError, match='Convertible models: .*googlenet'):
    convert.convert_state_dict('resnet50', {})
  with pytest.raises(ValueError, match="converts weights from torchvision, not 'timm'"):
    convert.convert_state_dict('googlenet', {}, source='timm')
