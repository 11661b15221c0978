import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from inception_jax import data


def fake_split(n=10):
  return {'image': np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1), 'label': np.arange(n) % 3}


def test_train_batches_are_a_pure_function_of_the_step():
  split = fake_split()
  a, b = data.TrainBatches(split, 5, seed=7), data.TrainBatches(split, 5, seed=7)
  for step in (3, 0, 1, 2):  # any order
    np.testing.assert_array_equal(a[step]['label'], b[step]['label'])
  epoch0 = np.concatenate([a[0]['image'].ravel(), a[1]['image'].ravel()])
  epoch1 = np.concatenate([a[2]['image'].ravel(), a[3]['image'].ravel()])
  assert sorted(epoch0) == sorted(epoch1) == list(range(10))  # each epoch sees every example once
  assert not np.array_equal(epoch0, epoch1)  # reshuffled every epoch
  other = data.TrainBatches(split, 5, seed=8)
  assert not np.array_equal(other[0]['image'], a[0]['image'])


def test_processes_read_disjoint_parts_of_the_global_batch():
  split = fake_split(16)
  whole = data.TrainBatches(split, 8, seed=0)[5]['image'].ravel()
  parts = [data.TrainBatches(split, 8, seed=0, process_index=i, process_count=2)[5]['image'].ravel() for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_eval_batches_cover_the_split_once_and_mask_the_padding():
  split = fake_split(7)
  batches = list(data.eval_batches(split, 3))
  assert [len(b['label']) for b in batches] == [3, 3, 3]
  assert [b['mask'].sum() for b in batches] == [3, 3, 1]
  real = np.concatenate([b['image'].ravel()[b['mask'] > 0] for b in batches])
  np.testing.assert_array_equal(real, np.arange(7))


def test_labels_out_of_range_are_rejected():
  with pytest.raises(ValueError, match=r'Labels must lie in \[0, 10\).*\[-1, 10\]'):
    data.check_batch({'image': np.zeros((3, 28, 28, 1)), 'label': np.array([10, -1, 3])}, 10)


def test_missing_dataset_offline_says_what_to_pass(tmp_path, make_config):
  config = make_config(data_dir=str(tmp_path / 'tfds'), manual_dir=str(tmp_path / 'empty'))
  with pytest.raises(data.DatasetUnavailableError, match='manual_dir.*TFDS_MANUAL_DIR'):
    data.prepare(config)


def test_real_mnist_loads_from_tfds(make_config):
  train, num_classes = data.load_split(make_config(), 'train')
  assert num_classes == 10
  assert train['image'].shape == (60_000, 28, 28, 1) and train['image'].dtype == np.float32
  assert 0.0 == train['image'].min() and train['image'].max() == 1.0
  assert sorted(np.unique(train['label'])) == list(range(10))


def test_a_process_that_finds_the_dataset_being_prepared_waits_and_reads_that_copy(tmp_path, make_config):
  # Two runs started together on a fresh machine (a sweep, two test workers) both found MNIST
  # unprepared, and the second to finish failed renaming TFDS's temporary folder into place. Here
  # this test is the process preparing it: it holds the lock while a real second process starts.
  prepared = data.prepare(make_config())  # the suite's copy, as the first process leaves it
  fresh = tmp_path / 'tfds'
  target = fresh / 'mnist' / os.path.basename(prepared.data_dir)
  code = (
      'import sys, ml_collections; from absl import logging; from inception_jax import data; '
      'logging.set_verbosity(logging.INFO); '
      "print(data.prepare(ml_collections.ConfigDict(dict(dataset='mnist', data_dir=sys.argv[1], manual_dir='')))"
      '.data_dir)'
  )
  log = tmp_path / 'second.log'
  with data._preparation_lock(str(target)), open(log, 'w') as out:
    second = subprocess.Popen([sys.executable, '-c', code, str(fresh)], cwd=ROOT, stdout=out, stderr=out, text=True)
    deadline = time.monotonic() + 120
    while 'Waiting for another process' not in log.read_text():
      assert second.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
      time.sleep(0.1)
    shutil.copytree(prepared.data_dir, target)  # what the first process's rename puts in place
  assert second.wait(120) == 0, log.read_text()[-3000:]
  output = log.read_text()
  assert output.splitlines()[-1] == str(target) and 'Generating' not in output, output[-3000:]
