"""What earlier versions wrote, read by this one: for each folder of tests/data/upgrade/ (named by
the date of the layout it holds), a tiny run's workdir (two steps, checkpoint, metrics.jsonl,
final_metrics.json) resumes and trains to step 4, and its converted weights load to the arrays
recorded beside them. A change of layout must read these, or refuse them in one line and move
nothing (issue 30). Add a folder when a layout changes:

    cd tests && python -c "import test_upgrade; test_upgrade.write('data/upgrade/YYYY-MM-DD')"
"""

import json
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

from conftest import metrics_lines, tiny_config
from inception_jax import models, train
from inception_jax.models import convert

DATA = pathlib.Path(__file__).parent / 'data' / 'upgrade'
MODEL = {'widths': (1, 1), 'reduce_width': 1, 'hidden_units': 2}


def config(num_train_steps: int):
  """The run every folder holds: a 4-parameter-wide network, 8 images a step."""
  config = tiny_config(
      global_batch_size=8,
      eval_batch_size=100,
      eval_split='test[:100]',
      train_split='train[:64]',
      num_train_steps=num_train_steps,
      warmup_steps=1,
      log_every_steps=1,
      checkpoint_every_steps=2,
      keep_checkpoints=1,
      compilation_cache_dir='',
  )
  config.model.update(MODEL)
  return config


def flat(variables) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(variables)}


def write(folder: str) -> None:
  """Writes this version's run and weights into `folder`, which it makes (FileExistsError if it exists)."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True)  # a new folder: the files removed below are the run's own
  state, _ = train.train_and_evaluate(config(2), str(folder / 'run'))
  for path in [*folder.glob('run/events.out.tfevents.*'), folder / 'run' / '.lock']:
    path.unlink()  # TensorBoard's file is TensorFlow's format, not ours; the lock names a process
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  model = models.create_model('mnist_inception', **MODEL)
  models.save_pretrained(folder / 'weights', 'mnist_inception', convert.model_config(model), variables)
  np.savez(folder / 'weights.npz', **flat(variables))


@pytest.mark.parametrize('version', sorted(p.name for p in DATA.iterdir()))
def test_a_run_and_weights_an_earlier_version_wrote_resume_and_load(tmp_path, version):
  workdir = tmp_path / 'run'
  shutil.copytree(DATA / version / 'run', workdir)
  logged = (workdir / 'metrics.jsonl').read_text().splitlines()
  _, final = train.train_and_evaluate(config(4), str(workdir))
  assert final['step'] == 4 and not (workdir / 'checkpoints_set_aside').exists()
  assert (workdir / 'metrics.jsonl').read_text().splitlines()[: len(logged)] == logged  # kept, then steps 3 and 4
  assert [l['step'] for l in metrics_lines(workdir) if 'train_loss' in l] == [1, 2, 3, 4]
  assert json.loads((workdir / 'final_metrics.json').read_text())['step'] == 4

  _, variables = models.load_pretrained('mnist_inception', DATA / version / 'weights')
  with np.load(DATA / version / 'weights.npz') as expected:
    loaded = flat(variables)
    assert sorted(loaded) == sorted(expected.files)
    for key, value in loaded.items():
      np.testing.assert_array_equal(value, expected[key], err_msg=key)
  assert not any(name.startswith('.') for name in os.listdir(DATA / version))  # read, never written
