"""Reading PyTorch weight files without PyTorch, the convert_weights script, load_pretrained."""

import collections
import io
import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from absl import flags

from inception_jax import convert, models, torch_files
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
      torch_files._rebuild_tensor(storage, offset, size, stride)


def test_reading_needs_no_torch(tmp_path):
  torch.save(awkward_state_dict(), tmp_path / 'weights.pth')
  code = (
      "import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
      'from inception_jax import torch_files\n'
      f"print(sorted(torch_files.load_state_dict({str(tmp_path / 'weights.pth')!r})))"
  )
  out = subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True).stdout
  assert 'conv.weight' in out


def run_script(*args):
  argv = flags.FLAGS(['convert_weights', *map(str, args)])
  try:
    return convert_weights.main(argv)
  finally:
    flags.FLAGS.unparse_flags()


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
  with pytest.raises(ValueError, match='python -m scripts.convert_weights'):
    models.load_pretrained('googlenet', tmp_path / 'googlenet.pth')


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
