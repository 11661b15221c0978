"""inception_jax.files: the one writer of a user's files (whole or not at all, never over a file
unless asked, open()'s permissions) and the lock of a run's folder."""

import os
import pathlib
import stat
import subprocess
import sys

import pytest

from inception_jax import files


def test_a_file_appears_whole_with_opens_mode_or_not_at_all(tmp_path):
  path = tmp_path / 'out.bin'
  with files.atomic(str(path)) as f:
    f.write(b'new')
    assert not path.exists()  # nothing at the path until the block ends
  umask = os.umask(0)
  os.umask(umask)
  assert path.read_bytes() == b'new' and stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
  with pytest.raises(FileExistsError), files.atomic(str(path)) as f:  # never over a file unless asked
    f.write(b'other')
  with pytest.raises(RuntimeError), files.atomic(str(path), overwrite=True) as f:  # a failure leaves the old one
    f.write(b'half')
    raise RuntimeError('disk full')
  assert path.read_bytes() == b'new'
  with files.atomic(str(path), overwrite=True, text=True) as f:
    f.write('replaced')
  assert path.read_text() == 'replaced' and os.listdir(tmp_path) == ['out.bin']  # no temporary file left


def test_an_output_is_checked_before_any_work(tmp_path):
  (tmp_path / 'in.png').write_bytes(b'image')
  (tmp_path / 'folder').mkdir()
  checks = {
      str(tmp_path / 'in.png'): 'is also an input',
      str(tmp_path / 'folder'): 'is a folder',
      str(tmp_path / 'no' / 'out.npy'): 'is not a folder this process can write to',
  }
  for path, message in checks.items():
    with pytest.raises(ValueError, match=message):
      files.check_output(path, '--out', overwrite=True, inputs=[str(tmp_path / 'in.png')])
  with pytest.raises(ValueError, match=r'--out=.*in.png exists; give a new name or pass --overwrite to replace it\.$'):
    files.check_output(str(tmp_path / 'in.png'), '--out', overwrite_flag='--overwrite')
  assert files.check_output(str(tmp_path / 'in.png'), '--out', overwrite=True) == str(tmp_path / 'in.png')
  with pytest.raises(ValueError, match='is also an input'):  # the same file by another name
    files.check_output(
        str(tmp_path / 'folder' / '..' / 'in.png'), '--out', overwrite=True, inputs=[str(tmp_path / 'in.png')]
    )


def test_a_folder_in_use_by_a_run_is_refused_naming_its_process(tmp_path):
  holder = subprocess.Popen(
      [
          sys.executable,
          '-c',
          f'from inception_jax import files\nwith files.run_lock({str(tmp_path)!r}):\n  print(1, flush=True); input()',
      ],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
  )
  try:
    assert holder.stdout.readline() == '1\n'
    with pytest.raises(ValueError, match=rf'in use by another run \(process {holder.pid} on .*\); wait for it'):
      with files.run_lock(str(tmp_path)):
        pass
  finally:
    holder.communicate('\n')
  with files.run_lock(str(tmp_path)):  # released when its process ended
    assert (tmp_path / '.lock').read_text().startswith(f'process {os.getpid()} on ')


def test_a_folder_appears_whole_or_not_at_all_and_only_what_it_wrote_is_removed(tmp_path):
  (tmp_path / 'kept.txt').write_text('a file of the user')
  with files.atomic_folder(str(tmp_path / 'new')) as inside:
    os.makedirs(inside)
    (pathlib.Path(inside) / 'a').write_text('1')
  assert sorted(os.listdir(tmp_path)) == ['kept.txt', 'new'] and os.listdir(tmp_path / 'new') == ['a']
  with pytest.raises(RuntimeError), files.atomic_folder(str(tmp_path / 'failed')) as inside:
    os.makedirs(inside)
    raise RuntimeError('disk full')
  with pytest.raises(FileExistsError), files.atomic_folder(str(tmp_path / 'new')) as inside:
    os.makedirs(inside)
  assert sorted(os.listdir(tmp_path)) == ['kept.txt', 'new'] and os.listdir(tmp_path / 'new') == ['a']
  assert (tmp_path / 'kept.txt').read_text() == 'a file of the user'
