"""Datasets from TFDS, as each process's part of the global batches for the training and
evaluation steps (parallel.shard_batch assembles the global arrays).

    inputs = create_input(config, jax.process_index(), jax.process_count())
    for batch in inputs.train_batches(start_step): ...   # this process's examples of each step
    for batch in inputs.eval_batches(): ...              # the eval split once, padded; 'mask'

Three pipelines, chosen by the config:
- 'memory' (the default): the whole split in memory as stored, images in [0, 1]; training
  batches are a pure function of the step, so a resumed run sees the same batches (MNIST).
- 'inception' (`config.input_pipeline = 'inception'`): any TFDS image-classification
  dataset streamed with tf.data, each process reading only its part of the split
  (tfds.split_for_jax_process); Inception crops and flips for training, resize and centre
  crop for evaluation, grey images tiled to 3 channels, then the model's normalization.
- `config.dataset = 'synthetic'`: random images and labels made once, for benchmarks.

Offline, TFDS prepares a dataset from files in its `manual_dir`: the config's
`manual_dir` field, or `$TFDS_MANUAL_DIR` when that is empty. With neither set, TFDS
downloads as usual.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import itertools
import math
import os
from collections.abc import Iterator

import grain
import ml_collections
import numpy as np
from absl import logging

try:
  import fcntl
except ImportError:  # not POSIX: datasets are prepared without a lock
  fcntl = None

from inception_jax import preprocess

MANUAL_DIR_ENV = 'TFDS_MANUAL_DIR'


class DatasetUnavailableError(RuntimeError):
  """The dataset is neither prepared nor preparable (offline without its files)."""


def manual_dir(config) -> str | None:
  return config.manual_dir or os.environ.get(MANUAL_DIR_ENV) or None


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
    builder = tfds.builder(config.dataset, data_dir=config.data_dir or None)
  except Exception as e:  # TFDS raises several types for an unknown name, with pages of text.
    close = difflib.get_close_matches(config.dataset, tfds.list_builders(), n=3)
    raise ValueError(
        f'Unknown TFDS dataset {config.dataset!r}'
        + (f'; did you mean {", ".join(close)}?' if close else '; tfds.list_builders() names them all.')
    ) from e
  folder = manual_dir(config)
  hint = (
      f'To prepare it offline, put its files (for mnist: train-images-idx3-ubyte.gz, '
      f'train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a folder '
      f'and pass --config.manual_dir=FOLDER or set {MANUAL_DIR_ENV}=FOLDER.'
  )
  if folder is not None and not (os.path.isdir(folder) and os.listdir(folder)):
    raise DatasetUnavailableError(f'The manual_dir {folder!r} for {config.dataset!r} is missing or empty. {hint}')
  if builder.is_prepared():
    return builder
  with _preparation_lock(builder.data_dir):  # one process prepares; the others wait, then read its copy
    builder = tfds.builder(config.dataset, data_dir=config.data_dir or None)
    if builder.is_prepared():
      return builder
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


@contextlib.contextmanager
def _preparation_lock(data_dir: str):
  """Held while a dataset's version folder `data_dir` is prepared: TFDS renames its temporary folder
  into place at the end, and a second process doing the same fails there. A lock file beside it
  (`.<version>.prepare.lock`, kept) on local disks; on others (gs://...) no lock."""
  if '://' in data_dir or fcntl is None:
    yield
    return
  parent, version = os.path.split(os.path.normpath(data_dir))
  os.makedirs(parent, exist_ok=True)
  with open(os.path.join(parent, f'.{version}.prepare.lock'), 'a') as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.info('Waiting for another process that is preparing %s.', data_dir)
      fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def load_split(config, split: str) -> tuple[dict[str, np.ndarray], int]:
  """A whole split in memory as {'image': float32 NHWC in [0, 1], 'label': int32}, and the class count."""
  return _load_split(config.dataset, split, config.data_dir or None, manual_dir(config))


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

  def __init__(
      self,
      data: dict[str, np.ndarray],
      global_batch_size: int,
      seed: int,
      process_index: int = 0,
      process_count: int = 1,
  ):
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


def eval_batches(
    data: dict[str, np.ndarray], batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[dict[str, np.ndarray]]:
  """The whole split in order, the last batch padded; 'mask' marks the real examples."""
  n = len(data['label'])
  per_process = batch_size // process_count
  local = slice(process_index * per_process, (process_index + 1) * per_process)
  for start in range(0, n, batch_size):
    batch = _pad({k: v[start : start + batch_size] for k, v in data.items()}, batch_size)
    yield {k: v[local] for k, v in batch.items()}


def _pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """`batch` padded with zeros to `size` examples, and a 'mask' that is 1 on the real ones."""
  real = len(batch['label'])
  padded = {k: np.concatenate([v, np.zeros((size - real, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
  return padded | {'mask': (np.arange(size) < real).astype(np.float32)}


def create_input(config, process_index: int = 0, process_count: int = 1):
  """The input pipeline `config` asks for (see the module docstring), for this process."""
  if config.global_batch_size % process_count or config.eval_batch_size % process_count:
    raise ValueError(
        f'global_batch_size={config.global_batch_size} and eval_batch_size={config.eval_batch_size} must both '
        f'be divisible by the {process_count} processes.'
    )
  if config.dataset == 'synthetic':
    return SyntheticInput(config, process_index, process_count)
  pipeline = config.input_pipeline
  if pipeline == 'memory':
    return InMemoryInput(config, process_index, process_count)
  if pipeline == 'inception':
    return InceptionInput(config, process_index, process_count)
  raise ValueError(f"Unknown input_pipeline {pipeline!r}; use 'memory' or 'inception'.")


class InMemoryInput:
  """Whole splits in memory, images as stored in [0, 1]; every process holds the splits and
  takes its part of each global batch (fine for MNIST-sized data)."""

  def __init__(self, config, process_index: int = 0, process_count: int = 1):
    train, self.num_classes = load_split(config, config.train_split)
    self._eval, _ = load_split(config, config.eval_split)
    check_batch(train, self.num_classes)
    check_batch(self._eval, self.num_classes)
    self.image_shape = train['image'].shape[1:]
    self.num_eval_examples = len(self._eval['label'])
    self.num_train_examples = len(train['label'])
    self._batches = TrainBatches(train, config.global_batch_size, config.seed, process_index, process_count)
    self._eval_args = (config.eval_batch_size, process_index, process_count)

  def train_batches(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    for step in itertools.count(start_step):
      # Every batch comes from the split whose labels were checked once above.
      yield self._batches[step]

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    return eval_batches(self._eval, *self._eval_args)


class SyntheticInput:
  """Random normal images and uniform labels, made once: the speed of the steps alone."""

  def __init__(self, config, process_index: int = 0, process_count: int = 1):
    size = config.image_size
    self.num_classes = config.num_classes
    self.image_shape = (size, size, 3)
    self.num_eval_examples = config.eval_batch_size
    self.num_train_examples = None  # no epochs: the config gives num_train_steps
    rng = np.random.default_rng([config.seed, process_index])

    def batch(n):
      return {
          'image': rng.standard_normal((n, *self.image_shape), np.float32),
          'label': rng.integers(0, self.num_classes, n).astype(np.int32),
      }

    self._train = batch(config.global_batch_size // process_count)
    self._eval = batch(config.eval_batch_size // process_count) | {
        'mask': np.ones(config.eval_batch_size // process_count, np.float32)
    }

  def train_batches(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    del start_step
    return itertools.repeat(self._train)

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    yield self._eval


NORMALIZATIONS = {
    'inception': (preprocess.INCEPTION_MEAN, preprocess.INCEPTION_STD),
    'imagenet': (preprocess.IMAGENET_MEAN, preprocess.IMAGENET_STD),
    'none': ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


class InceptionInput:
  """A TFDS image-classification dataset streamed with tf.data, this process's part only.

  Training: an endless stream, reshuffled every epoch, of Inception crops (config.crop_area_range,
  config.crop_aspect_ratio_range) resized to config.image_size, flipped left-right at random
  when config.random_flip. A resumed run draws a fresh order from (seed, start step) rather
  than replaying the interrupted one's (streaming datasets cannot seek cheaply).
  Evaluation: resize to image_size / config.eval_crop_fraction, central image_size crop.
  Both: grey images tiled to 3 channels, then config.normalization ('inception': [-1, 1],
  'imagenet': mean/std, 'none': [0, 1]).
  """

  def __init__(self, config, process_index: int = 0, process_count: int = 1):
    self._tfds = _tfds()
    self._builder = prepare(config)
    features = self._builder.info.features
    if 'image' not in features or 'label' not in features or not hasattr(features['label'], 'num_classes'):
      raise ValueError(
          f'TFDS dataset {config.dataset!r} has features {sorted(features)}; an image-classification dataset '
          "with 'image' and a class 'label' is needed (e.g. imagenet2012, imagenette, cifar10, mnist)."
      )
    if config.normalization not in NORMALIZATIONS:
      raise ValueError(f'Unknown normalization {config.normalization!r}; use one of {sorted(NORMALIZATIONS)}.')
    self.num_classes = features['label'].num_classes
    self.image_shape = (config.image_size, config.image_size, 3)
    self._config = config
    self._process = (process_index, process_count)
    splits = self._builder.info.splits
    self.num_eval_examples = splits[config.eval_split].num_examples
    self.num_train_examples = splits[config.train_split].num_examples
    # Every process runs as many eval steps as the one with the largest part.
    local = [splits[self._split(config.eval_split, i)].num_examples for i in range(process_count)]
    self._eval_batch_size = config.eval_batch_size // process_count
    self._num_eval_batches = math.ceil(max(local) / self._eval_batch_size)

  def _split(self, split: str, process_index: int | None = None) -> str:
    index = self._process[0] if process_index is None else process_index
    return self._tfds.split_for_jax_process(split, process_index=index, process_count=self._process[1])

  def _finish(self, image, label):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    if image.shape[-1] == 1:
      image = tf.tile(image, [1, 1, 3])
    mean, std = NORMALIZATIONS[self._config.normalization]
    return {'image': (image - mean) / std, 'label': tf.cast(label, tf.int32)}

  def train_batches(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    config, tfds = self._config, self._tfds
    seed = int(np.random.default_rng([config.seed, start_step, self._process[0]]).integers(2**31))
    ds = self._builder.as_dataset(
        split=self._split(config.train_split), shuffle_files=True, read_config=tfds.ReadConfig(shuffle_seed=seed)
    )
    ds = ds.shuffle(config.shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True).repeat().enumerate()

    def example(index, features):
      crop_seed, flip_seed = tf.unstack(
          tf.random.experimental.stateless_split(tf.stack([tf.constant(seed, tf.int64), index]), 2)
      )
      image = preprocess.random_resized_crop(
          features['image'],
          config.image_size,
          crop_seed,
          area_range=tuple(config.crop_area_range),
          aspect_ratio_range=tuple(config.crop_aspect_ratio_range),
      )
      if config.random_flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
      return self._finish(image, features['label'])

    ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(config.global_batch_size // self._process[1], drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return iter(tfds.as_numpy(ds))

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    config, n = self._config, self._eval_batch_size
    ds = self._builder.as_dataset(split=self._split(config.eval_split), shuffle_files=False)
    ds = ds.map(
        lambda f: self._finish(
            preprocess.resize_center_crop(f['image'], config.image_size, config.eval_crop_fraction), f['label']
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    batches = iter(self._tfds.as_numpy(ds.batch(n).prefetch(tf.data.AUTOTUNE)))
    for _ in range(self._num_eval_batches):
      batch = next(batches, None) or {
          'image': np.zeros((0, *self.image_shape), np.float32),
          'label': np.zeros((0,), np.int32),
      }
      yield _pad(batch, n)
