"""Datasets from TFDS, as global batches for the training and evaluation steps.

Offline, TFDS prepares a dataset from files in its `manual_dir`: the config's
`manual_dir` field, or `$TFDS_MANUAL_DIR` when that is empty. With neither set, TFDS
downloads as usual.
"""

from __future__ import annotations

import functools
import os
from typing import Iterator

import grain
import ml_collections
import numpy as np

MANUAL_DIR_ENV = 'TFDS_MANUAL_DIR'


class DatasetUnavailableError(RuntimeError):
  """The dataset is neither prepared nor preparable (offline without its files)."""


def manual_dir(config) -> str | None:
  return config.get('manual_dir') or os.environ.get(MANUAL_DIR_ENV) or None


def _tfds():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  # TFDS only reads files here; keep TensorFlow off any accelerator JAX uses.
  tf.config.set_visible_devices([], 'GPU')
  return tfds


def prepare(config):
  """Returns the TFDS builder of `config.dataset`, prepared (offline from manual_dir if given)."""
  tfds = _tfds()
  try:
    builder = tfds.builder(config.dataset, data_dir=config.get('data_dir') or None)
  except Exception as e:  # TFDS raises several types for an unknown name.
    raise ValueError(f'Unknown TFDS dataset {config.dataset!r}: {e}') from e
  folder = manual_dir(config)
  hint = (
      f'To prepare it offline, put its files (for mnist: train-images-idx3-ubyte.gz, '
      f'train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a folder '
      f'and pass --config.manual_dir=FOLDER or set {MANUAL_DIR_ENV}=FOLDER.'
  )
  if folder is not None and not (os.path.isdir(folder) and os.listdir(folder)):
    raise DatasetUnavailableError(f'The manual_dir {folder!r} for {config.dataset!r} is missing or empty. {hint}')
  if not builder.is_prepared():
    download_config = tfds.download.DownloadConfig(manual_dir=folder) if folder else None
    try:
      builder.download_and_prepare(download_config=download_config)
    except Exception as e:
      where = f'from manual_dir {folder!r}' if folder else 'by downloading it'
      raise DatasetUnavailableError(
          f'Could not prepare TFDS dataset {config.dataset!r} {where} into {builder.data_dir!r}: '
          f'{type(e).__name__}: {e}. {hint}'
      ) from e
  return builder


def load_split(config, split: str) -> tuple[dict[str, np.ndarray], int]:
  """A whole split in memory as {'image': float32 NHWC in [0, 1], 'label': int32}, and the class count."""
  return _load_split(config.dataset, split, config.get('data_dir') or None, manual_dir(config))


@functools.lru_cache(maxsize=4)
def _load_split(dataset: str, split: str, data_dir: str | None, folder: str | None):
  tfds = _tfds()
  builder = prepare(ml_collections.ConfigDict({'dataset': dataset, 'data_dir': data_dir, 'manual_dir': folder}))
  arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  num_classes = builder.info.features['label'].num_classes
  data = {'image': arrays['image'].astype(np.float32) / 255.0, 'label': arrays['label'].astype(np.int32)}
  for array in data.values():
    array.flags.writeable = False  # shared by every caller of the cache
  return data, num_classes


def check_batch(batch: dict[str, np.ndarray], num_classes: int) -> None:
  """Host-side checks a jitted step cannot make."""
  labels = np.asarray(batch['label'])
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    bad = labels[(labels < 0) | (labels >= num_classes)]
    raise ValueError(
        f'Labels must lie in [0, {num_classes}) for a {num_classes}-class model; found {sorted(set(bad.tolist()))[:10]}.'
    )
  if batch['image'].shape[0] != labels.shape[0]:
    raise ValueError(f'{batch["image"].shape[0]} images but {labels.shape[0]} labels in a batch.')


class TrainBatches:
  """Training batches as a pure function of the step.

  Every epoch is a new permutation of the split drawn from `seed` (grain's shuffle over
  a repeated index range), so batch `step` is the same whenever it is asked for: the step
  stored in a checkpoint is the input position, and a resumed run sees exactly the
  batches an uninterrupted one would have.
  """

  def __init__(self, data: dict[str, np.ndarray], global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    n = len(data['label'])
    if global_batch_size > n:
      raise ValueError(f'global_batch_size={global_batch_size} exceeds the {n} training examples.')
    self._data = data
    self._indices = grain.MapDataset.range(n).shuffle(seed=seed).repeat().batch(global_batch_size, drop_remainder=True)
    per_process = global_batch_size // process_count
    self._local = slice(process_index * per_process, (process_index + 1) * per_process)

  def __getitem__(self, step: int) -> dict[str, np.ndarray]:
    indices = self._indices[step][self._local]
    return {k: v[indices] for k, v in self._data.items()}


def eval_batches(data: dict[str, np.ndarray], batch_size: int,
                 process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """The whole split in order, the last batch padded; 'mask' marks the real examples."""
  n = len(data['label'])
  per_process = batch_size // process_count
  local = slice(process_index * per_process, (process_index + 1) * per_process)
  for start in range(0, n, batch_size):
    batch = {k: v[start:start + batch_size] for k, v in data.items()}
    real = len(batch['label'])
    batch = {k: np.concatenate([v, np.zeros((batch_size - real, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
    batch['mask'] = (np.arange(batch_size) < real).astype(np.float32)
    yield {k: v[local] for k, v in batch.items()}
