"""The misuse matrix: each command against realistic mistakes (wrong or missing paths, a folder
where a file belongs, an output that is an input or exists, sizes of zero or less). Every case
must end in one line on stderr and a non-zero exit status, with every file that was there before
byte-identical and nothing added (issue 30). The commands run in this process (their absl mains);
the experiments and chaos start processes of their own (they define their flags as commands)."""

import importlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import conftest
from conftest import ROOT
from scripts import chaos

# Each script's flags are taken out of absl's FLAGS as soon as it is imported: several define --model.
RUN = {
    name: conftest.script_runner(importlib.import_module(f'scripts.{name}'))
    for name in ('fid', 'predict', 'convert_weights', 'plot_metrics', 'flops', 'benchmark')
}


def command(module: str):
  """`run(*args) -> exit status` of `python -m module` in a process of its own; its stderr passed on."""

  def run(*args) -> int:
    done = subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, capture_output=True, text=True)
    sys.stderr.write(done.stderr)
    return done.returncode

  return run


RUN.update(
    chaos=command('scripts.chaos'),
    mnist_inception=command('experiments.mnist_inception'),
    finetune=command('experiments.finetune'),
)

# (command, arguments with {d} for the folder of the files below, what the one line says)
CASES = [
    ('fid', ['{d}/images', '{d}/absent'], 'absent'),
    ('fid', ['{d}/images', '{d}/notes.txt'], 'notes.txt'),
    ('fid', ['{d}/images', '{d}/images', '--batch_size=0'], '--batch_size must be positive'),
    ('fid', ['{d}/images', '{d}/images', '--batch_size=-3'], '--batch_size must be positive'),
    ('fid', ['{d}/images', '{d}/images', '--metrics=is', '--is_splits=0'], '--is_splits must be positive'),
    ('fid', ['{d}/images', '{d}/images', '--metrics=kid', '--kid_subsets=-1'], '--kid_subsets must be positive'),
    ('fid', ['{d}/images', '{d}/images', '--metrics=kid', '--kid_subset_size=0'], 'KID subset size 0'),
    ('fid', ['{d}/images', '{d}/images', '--metrics=pr', '--pr_block_size=0'], '--pr_block_size must be positive'),
    ('fid', ['{d}/images', '{d}/images', '--metrics=nope'], 'unknown metrics'),
    ('fid', ['{d}/images'], 'give two paths'),
    ('fid', ['{d}/images', '{d}/images', '--weights={d}/absent.pth'], 'absent.pth'),
    ('fid', ['{d}/images', '{d}/images', '--weights={d}/notes.txt'], 'notes.txt'),
    ('fid', ['{d}/images', '{d}/images', '--weights={d}/images'], 'images'),
    ('fid', ['--save_stats', '{d}/images', '{d}/stats.npz'], 'stats.npz exists'),
    ('fid', ['--save_stats', '{d}/stats.npz', '{d}/stats.npz'], 'is also an input'),
    ('fid', ['--save_stats', '{d}/images', '{d}/absent/out.npz'], 'is not a folder this process can write to'),
    ('fid', ['--save_stats', '{d}/images', '{d}/images.npz'], 'images.npz exists'),
    ('fid', ['--save_stats', '{d}/images'], '--save_stats takes PATH and OUT.npz'),
    ('fid', ['--save_stats', '{d}/images', '{d}/new.npz', '--batch_size=0'], '--batch_size must be positive'),
    ('predict', ['{d}/images/0.png', '--embed={d}/images/0.png'], 'is also an input'),
    ('predict', ['{d}/images/0.png', '--embed', '{d}/images/1.png'], 'exists'),
    ('predict', ['{d}/images/0.png', '--embed={d}/images', '--overwrite'], 'is a folder'),
    ('predict', ['{d}/images/0.png', '--embed={d}/absent/e.npy'], 'is not a folder this process can write to'),
    ('predict', ['{d}/images/0.png', '--batch_size=0'], 'batch_size must be at least 1'),
    ('predict', ['{d}/images/0.png', '--top=0'], '--top must be positive'),
    ('predict', ['{d}/images/0.png', '--pretrained={d}/absent.pth'], 'absent.pth'),
    ('predict', ['{d}/images/0.png', '--pretrained={d}/notes.txt'], 'notes.txt'),
    ('predict', ['{d}/images/0.png', '--model=nope'], 'nope'),
    ('predict', [], 'give at least one image'),
    ('convert_weights', ['--model=googlenet', '{d}/notes.txt', '{d}/images'], 'exists'),
    ('convert_weights', ['--model=googlenet', '{d}/notes.txt', '{d}/notes.txt'], 'is also an input'),
    ('convert_weights', ['--model=googlenet', '{d}/absent.pth', '{d}/new'], 'absent.pth'),
    ('convert_weights', ['--model=googlenet', '{d}/images', '{d}/new'], 'images'),
    ('convert_weights', ['--model=googlenet', '{d}/notes.txt', '{d}/new'], 'notes.txt'),
    ('convert_weights', ['--model=googlenet', '{d}/notes.txt', '{d}/absent/new'], 'is not a folder this process'),
    ('convert_weights', ['--model=nope', '{d}/notes.txt', '{d}/new'], "no weight conversion for model 'nope'"),
    ('convert_weights', ['--model=googlenet', '--source=timm', '{d}/notes.txt', '{d}/new'], "not 'timm'"),
    ('convert_weights', ['{d}/notes.txt', '{d}/new'], '--model is required'),
    ('convert_weights', ['--model=googlenet', '{d}/notes.txt'], 'give SRC and DST'),
    ('plot_metrics', ['{d}/run', '--out={d}/run/metrics.jsonl'], 'is also an input'),
    ('plot_metrics', ['{d}/run', '--out={d}/plot.png'], 'exists; give a new name or pass --overwrite'),
    ('plot_metrics', ['{d}/run', '--out={d}/images', '--overwrite'], 'is a folder'),
    ('plot_metrics', ['{d}/run', '--out={d}/absent/p.png'], 'is not a folder this process can write to'),
    ('plot_metrics', ['{d}/images'], 'has no metrics.jsonl'),
    ('plot_metrics', ['{d}/absent'], 'has no metrics.jsonl'),
    ('plot_metrics', [], 'give at least one workdir'),
    ('flops', ['--model=nope'], 'nope'),
    ('flops', ['--model=googlenet', '--image_size=0'], '--image_size must be positive'),
    ('flops', ['--model=googlenet', '--image_size=-8'], '--image_size must be positive'),
    ('flops', ['--model=googlenet', '--in_channels=0'], '--in_channels must be positive'),
    ('flops', ['--block=1,2,3', '--in_channels=3', '--image_size=28'], 'six comma-separated widths'),
    ('flops', ['--block=1,2,3,4,5,x', '--in_channels=3', '--image_size=28'], 'six comma-separated widths'),
    ('flops', ['--block=1,2,3,4,5,0', '--in_channels=3', '--image_size=28'], 'widths must be positive'),
    ('flops', ['--block=1,2,3,4,5,6'], 'needs --in_channels and --image_size'),
    ('flops', [], 'give exactly one of --model'),
    ('flops', ['--model=googlenet', 'extra'], 'unexpected arguments'),
    ('chaos', ['--workdir={d}/new', '--damage=nope'], "Unknown damage modes ['nope']"),
    ('chaos', ['--workdir={d}/run'], '--workdir={d}/run already holds files'),
    ('chaos', ['--workdir={d}/notes.txt'], 'already holds files'),
    ('chaos', ['--workdir={d}/new', '--kills=-1'], '--kills must be 0 or more'),
    ('chaos', ['--workdir={d}/new', '--sigterms=-2'], '--sigterms must be 0 or more'),
    ('chaos', ['--workdir={d}/new', '--timeout=0'], '--timeout must be positive'),
    ('benchmark', ['--model=nope'], 'unknown --model=nope'),
    ('benchmark', ['--batch_size=0'], '--batch_size must be positive'),
    ('benchmark', ['--steps=-1'], '--steps must be positive'),
    ('benchmark', ['--mode=resume', '--resume_config={d}/absent.py'], 'no config file'),
    ('benchmark', ['--model=googlenet', '--image_size=8', '--nokeep_freed_memory'], 'at least 15x15'),
    ('benchmark', ['extra'], 'unexpected arguments'),
    # The training commands: their one line comes before any data is read or any folder is made.
    ('mnist_inception', ['--workdir={d}/new', '--config={d}/absent.py'], 'no config file'),
    ('mnist_inception', ['--workdir={d}/new', '--config.no_such_field=1'], 'no_such_field'),
    ('mnist_inception', ['--workdir={d}/new', '--config.global_batch_size=0'], 'global_batch_size must be positive'),
    ('mnist_inception', ['--workdir={d}/notes.txt'], 'is a file; give a folder'),
    ('mnist_inception', ['--workdir={d}/run', '--config.resume_from_step=3'], 'holds no checkpoint'),
    ('mnist_inception', ['--workdir={d}/new', '--config.allow_config_change=True'], "names 'True'"),
    ('finetune', ['--workdir={d}/new', '--config.pretrained={d}/absent.pth'], 'absent.pth: no such file or folder'),
    ('finetune', ['--workdir={d}/new', '--config.trainable=nope'], "Unknown trainable 'nope'"),
]


def make_files(d):
  (d / 'images').mkdir()
  for i in range(3):
    Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(d / 'images' / f'{i}.png')
  (d / 'notes.txt').write_text('not weights, not an image')
  (d / 'plot.png').write_bytes(b'a plot kept')
  np.savez(d / 'stats.npz', mu=np.zeros(3), sigma=np.eye(3))
  (d / 'images.npz').mkdir()
  (d / 'run').mkdir()
  (d / 'run' / 'metrics.jsonl').write_text('{"step": 1, "train_loss": 2.0}\n')


@pytest.mark.parametrize('command, args, message', CASES, ids=[f'{c[0]}-{i}' for i, c in enumerate(CASES)])
def test_a_mistake_is_one_line_and_changes_no_file(tmp_path, capsys, monkeypatch, command, args, message):
  make_files(tmp_path)
  monkeypatch.setenv('INCEPTION_JAX_CACHE', str(tmp_path / 'absent_cache'))  # no download, no cache written
  before, paths = chaos.file_digests(str(tmp_path)), tree(tmp_path)
  status = RUN[command](*[a.format(d=tmp_path) for a in args])
  err = capsys.readouterr().err
  assert status not in (0, None) and err.count('\n') == 1 and err.startswith('error: '), (status, err)
  assert message.format(d=tmp_path) in err, err
  assert chaos.file_digests(str(tmp_path)) == before and tree(tmp_path) == paths


def tree(folder) -> list[str]:
  return sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*'))
