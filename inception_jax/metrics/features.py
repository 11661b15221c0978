"""Extraction and accumulation: the FID Inception as one jitted step over the mesh, and the
statistics of its features (mean, covariance; every row when kept), streamed batch by batch."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from scipy.linalg import blas

from inception_jax import files, npz, parallel
from inception_jax.metrics import preprocessing, sources
from inception_jax.models.inception_v3 import FID_FEATURES

MAX_STATISTICS_DIMS = 8192  # a float64 sigma of 512 MiB; pytorch-fid's largest is 2048

# Extraction: one jitted, sharded step.

SPATIAL_TAP = ('Mixed_6d', 'branch1x1')  # the 2015 graph's mixed_6/conv: 1x1 conv, BN, ReLU; 17x17x192 at 299
SPATIAL_CHANNELS = 7  # the ADM evaluator keeps mixed_6/conv[..., :7] (evaluator.py L599)
SPATIAL_DIMS = 17 * 17 * SPATIAL_CHANNELS  # 2023, flattened in (h, w, c) order (evaluator.py L157-158)


@functools.cache
def _extract_step(model, mesh, dims: int, resize: bool, logits: bool, spatial: bool, preprocess: str):
  batch = parallel.batch_sharding(mesh)
  capture = (lambda module, _: module.path == SPATIAL_TAP) if spatial else False

  def step(variables, images, num_valid):
    # The metrics are defined in float32: every convolution and matmul at full precision, not
    # with bfloat16 passes (TPU) or TF32 (GPU) (tests/test_metrics_adm.py reads the program).
    with jax.default_matmul_precision('float32'):
      x = preprocessing.network_inputs(images, preprocess, resize)
      (_, features), state = model.apply(
          variables, x, train=False, capture_intermediates=capture, mutable=['intermediates']
      )
      tap = features[FID_FEATURES[dims]]
      # pytorch-fid averages the smaller taps' maps (adaptive_avg_pool2d); XLA drops the layers after a tap.
      out = {
          'features': tap.mean(axis=(1, 2)) if tap.ndim == 4 else tap,
          'valid': jnp.arange(images.shape[0]) < num_valid,
      }
      if logits:
        out['logits'] = features['pre_logits'] @ variables['params']['fc']['kernel']
      if spatial:
        (maps,) = state['intermediates'][SPATIAL_TAP[0]][SPATIAL_TAP[1]]['__call__']
        out['spatial'] = maps[..., :SPATIAL_CHANNELS].reshape(maps.shape[0], -1)
    return out

  return jax.jit(step, in_shardings=(parallel.replicated(mesh), batch, parallel.replicated(mesh)), out_shardings=batch)


class Extractor:
  """The FID Inception as one jitted step over the mesh's 'data' axis: pool3 (or a smaller
  pytorch-fid tap), logits and sFID's spatial features from one pass.

  `extractor(images, num_valid)`: a global batch (NHWC, uint8 or floats in [0, 1], batch
  divisible by the devices; with preprocess='clean', what `prepare` made of it) -> global
  arrays 'features' (batch, dims), 'valid' (row < num_valid), with `logits=True` 'logits'
  (batch, 1008; pool3 times the fc weight, torch-fidelity's 'logits_unbiased' and the ADM
  evaluator's softmax input) and with `spatial=True` 'spatial' (batch, 2023; sFID's
  mixed_6/conv[..., :7] flattened in (h, w, c) order).

  `preprocess`: 'pytorch_fid', 'tf1' or 'clean' (`preprocessing`). `resize=False` skips the
  resize to 299: images then go in at their own size, at least 75x75.
  """

  def __init__(
      self,
      model,
      variables,
      *,
      dims: int = 2048,
      mesh=None,
      resize: bool = True,
      logits: bool = False,
      spatial: bool = False,
      preprocess: str = 'pytorch_fid',
  ):
    if dims not in FID_FEATURES:
      raise ValueError(f"dims must be one of pytorch-fid's {sorted(FID_FEATURES)}, got {dims}.")
    preprocessing.check(preprocess)
    if spatial and not resize:
      raise ValueError("sFID's spatial features are defined at 299x299: they need resize=True.")
    self.mesh = mesh if mesh is not None else parallel.make_mesh()
    self.dims, self.logits, self.spatial, self.preprocess = dims, logits, spatial, preprocess
    self.variables = jax.device_put(variables, parallel.replicated(self.mesh))
    # At pool3 the whole network runs anyway: the logits and the spatial features then cost next
    # to nothing, and computing them always makes one program (one compilation) where four would do.
    whole = dims == 2048
    self._step = _extract_step(
        model, self.mesh, dims, resize, logits or whole, spatial or (whole and resize), preprocess
    )
    self._keys = ['features', 'valid'] + ['logits'] * logits + ['spatial'] * spatial

  def prepare(self, images: np.ndarray) -> np.ndarray:
    """The host's part of the preprocessing, on this process's rows (clean-fid's PIL resize;
    nothing for the others). `compute_statistics` and `Accumulator` call it."""
    return preprocessing.resize_clean(images) if self.preprocess == 'clean' else images

  def __call__(self, images, num_valid):
    out = self._step(self.variables, images, np.int32(num_valid))
    return {key: out[key] for key in self._keys}


# Statistics.


@dataclasses.dataclass(frozen=True)
class Statistics:
  """What the metrics need of one set of images: pytorch-fid's `mu` and `sigma` (float64), sFID's
  `mu_s` and `sigma_s` when computed, and, when kept, every image's features (for KID and
  precision/recall) and logits (for IS), in the images' order. `preprocess` names the
  preprocessing that made them (None: a file that does not say)."""

  mu: np.ndarray
  sigma: np.ndarray
  num_images: int | None = None  # None: a statistics file that does not say
  features: np.ndarray | None = None
  logits: np.ndarray | None = None
  mu_s: np.ndarray | None = None
  sigma_s: np.ndarray | None = None
  preprocess: str | None = None

  @property
  def dims(self) -> int:
    return self.mu.shape[0]

  def arrays(self) -> dict[str, np.ndarray]:
    """The file's members: pytorch-fid's mu and sigma, ADM's mu_s and sigma_s, num_images, preprocess."""
    out = {'mu': self.mu, 'sigma': self.sigma}
    if self.mu_s is not None:
      out.update(mu_s=self.mu_s, sigma_s=self.sigma_s)
    if self.num_images is not None:
      out['num_images'] = np.int64(self.num_images)
    if self.preprocess is not None:
      out['preprocess'] = np.str_(self.preprocess)
    return out

  def save(self, path: str, *, overwrite: bool = False) -> None:
    """pytorch-fid's `--save-stats` file (mu, sigma), with ADM's mu_s and sigma_s when there are
    any, num_images and preprocess: written whole or not at all, never over a file unless
    `overwrite`. '.npz' is added to a path without it, as np.savez does."""
    path = os.fspath(path)
    with files.atomic(path if path.endswith('.npz') else path + '.npz', overwrite=overwrite) as f:
      np.savez_compressed(f, **self.arrays())

  @classmethod
  def load(cls, path: str) -> Statistics:
    """A statistics file (pytorch-fid's, ADM's reference batch or `save`'s), read by `npz.Archive`
    (no pickle; headers checked before any data is read) and checked: finite means of at most
    MAX_STATISTICS_DIMS dimensions, finite symmetric covariances, a count and a preprocessing
    name if any."""
    with npz.Archive(path) as archive:
      keys = set(archive.keys)
      if not {'mu', 'sigma'} <= keys:
        raise ValueError(f'{path} holds {npz.short(sorted(keys))}, not FID statistics (mu, sigma).')
      if ('mu_s' in keys) != ('sigma_s' in keys):
        raise ValueError(f'{path} holds only one of mu_s and sigma_s; sFID needs both.')
      mu, sigma = _read_moments(archive, path, 'mu', 'sigma')
      mu_s, sigma_s = _read_moments(archive, path, 'mu_s', 'sigma_s') if 'mu_s' in keys else (None, None)
      count = archive.header('num_images') if 'num_images' in keys else None
      if count is not None and (count.shape != () or count.dtype.kind not in 'iu'):
        raise ValueError(
            f'{path}: num_images is {npz.short(count.dtype)} of shape {npz.short(count.shape)}, not a count; write the file '
            'with Statistics.save, or without num_images.'
        )
      num_images = None if count is None else int(archive.read('num_images'))
      name = None
      if 'preprocess' in keys:
        header = archive.header('preprocess')
        if header.shape != () or header.dtype.kind != 'U' or header.nbytes > 64:
          raise ValueError(
              f'{path}: preprocess is {npz.short(header.dtype)} of shape {npz.short(header.shape)}, not a name.'
          )
        name = str(archive.read('preprocess'))
        if name not in preprocessing.PREPROCESSING:
          raise ValueError(f'{path}: preprocess {name!r} is none of {", ".join(preprocessing.PREPROCESSING)}.')
    if num_images is not None and num_images < 0:
      raise ValueError(f'{path}: num_images is {num_images}, not a count.')
    if mu_s is not None and mu_s.shape[0] != SPATIAL_DIMS:
      raise ValueError(f"{path}: mu_s is {mu_s.shape[0]}-d; sFID's spatial features are {SPATIAL_DIMS}-d.")
    return cls(mu, sigma, num_images, mu_s=mu_s, sigma_s=sigma_s, preprocess=name)


def _read_moments(archive: npz.Archive, path: str, mean: str, covariance: str) -> tuple[np.ndarray, np.ndarray]:
  """A mean and its covariance from `archive`, checked: shapes and size before reading, then finite and symmetric."""
  mu, sigma = archive.header(mean), archive.header(covariance)
  if not (mu.dtype.kind in 'fiu' and sigma.dtype.kind in 'fiu' and len(mu.shape) == 1 and sigma.shape == mu.shape * 2):
    raise ValueError(
        f'{path}: {mean} ({npz.short(mu.dtype)} {npz.short(mu.shape)}) and {covariance} ({npz.short(sigma.dtype)} '
        f'{npz.short(sigma.shape)}) are not a mean and its covariance.'
    )
  if not 0 < mu.shape[0] <= MAX_STATISTICS_DIMS:
    raise ValueError(
        f'{path}: {mu.shape[0]}-d statistics, not between 1 and the budget of {MAX_STATISTICS_DIMS} dimensions; '
        "pytorch-fid's are 64-, 192-, 768- or 2048-d."
    )
  mu, sigma = (np.asarray(archive.read(key), np.float64) for key in (mean, covariance))
  if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
    raise ValueError(
        f'{path}: {mean} or {covariance} holds NaN or infinity; compute the statistics again (--save_stats).'
    )
  asymmetry = np.abs(sigma - sigma.T).max()
  if asymmetry > 1e-6 * np.abs(sigma).max():  # float64 round-off is 1e-16 of it
    raise ValueError(
        f'{path}: {covariance} is not symmetric (|{covariance} - {covariance}.T| up to {asymmetry:.3g}), so not a '
        'covariance; compute the statistics again (--save_stats).'
    )
  return mu, sigma


class _Moments:
  """Count, sum and sum of outer products of feature rows, in float64: the same result for any
  split of the rows into batches, devices or processes (up to float64 rounding)."""

  def __init__(self, dims: int):
    self.count, self.total = 0, np.zeros(dims)
    self.outer = np.zeros((dims, dims), order='F')  # upper triangle only (BLAS syrk)

  def add(self, rows: np.ndarray) -> None:
    rows = np.asarray(rows, np.float64)
    self.count += rows.shape[0]
    self.total += rows.sum(axis=0)
    # outer += rows.T @ rows, in place and at half a matmul's cost; rows.T is Fortran-ordered.
    self.outer = blas.dsyrk(1.0, rows.T, beta=1.0, c=self.outer, overwrite_c=1)

  def statistics(self) -> tuple[np.ndarray, np.ndarray]:
    if self.count < 2:
      raise ValueError(f'FID statistics need at least 2 images, got {self.count}.')
    outer = np.triu(self.outer) + np.triu(self.outer, 1).T
    mu = self.total / self.count
    return mu, (outer - self.count * np.outer(mu, mu)) / (self.count - 1)  # np.cov's unbiased estimate

  def merged(self) -> _Moments:
    """The moments of every process's rows (each process gets the same)."""
    merged = _Moments(self.total.shape[0])
    merged.count = int(_allgather(np.int64(self.count)).sum())
    merged.total = _allgather(self.total).sum(axis=0)
    merged.outer = np.asfortranarray(_allgather(self.outer).sum(axis=0))
    return merged


def _allgather(x: np.ndarray) -> np.ndarray:
  """Every process's `x` (same shape everywhere), stacked, bit for bit: float64 and int64 travel
  as uint32 pairs, since JAX would otherwise cast them to 32 bits."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  x = np.atleast_1d(np.ascontiguousarray(x))
  words = x.view(np.uint32) if x.dtype.itemsize == 8 else x
  out = np.asarray(multihost_utils.process_allgather(words))
  return out.view(x.dtype).reshape(-1, *x.shape)


def _local_shards(array: jax.Array) -> dict[int, np.ndarray]:
  """This process's rows of a batch-sharded array, by their first global row."""
  return {shard.index[0].start or 0: np.asarray(shard.data) for shard in array.addressable_shards}


class Accumulator:
  """Statistics of images as they come, for training loops and generators: `update` per batch,
  `result` at the end. Nothing is written to disk.

  `update(images, num_valid=None)`: a global batch as a jax.Array (e.g. a generator's output
  on the mesh), or as numpy this process's rows of it (as `parallel.shard_batch` takes them).
  Only the first `num_valid` rows of the global batch count (default: all). A batch that does
  not divide over the devices is padded (single process). Each step's host work overlaps
  the next step on the devices.

  With preprocess='clean' the images go through the host for clean-fid's resize
  (`Extractor.prepare`), a global jax.Array too; `prepared=True` says it has run already.

  `result()`: `Statistics` over all processes (under jax.distributed, every process gets the
  same), with sFID's statistics when the extractor has `spatial`. `keep_features` (KID,
  precision/recall) and `keep_logits` (IS) keep every image's rows.
  """

  def __init__(self, extract: Extractor, *, keep_features: bool = False, keep_logits: bool = False):
    if keep_logits and not extract.logits:
      raise ValueError('keep_logits needs an Extractor built with logits=True.')
    self._extract = extract
    self._keep = [k for k, keep in (('features', keep_features), ('logits', keep_logits)) if keep]
    self._moments = _Moments(extract.dims)
    self._spatial = _Moments(SPATIAL_DIMS) if extract.spatial else None
    self._kept = {k: [] for k in self._keep}
    self._order = []  # global positions of the kept rows: orders them across processes
    self._offset, self._pending = 0, None

  def update(self, images, num_valid: int | None = None, *, prepared: bool = False) -> None:
    mesh = self._extract.mesh
    devices = mesh.devices.size
    if self._extract.preprocess == 'clean' and not prepared:
      if isinstance(images, jax.Array):  # this process's rows, in order (parallel.shard_batch's layout)
        images = np.concatenate([rows for _, rows in sorted(_local_shards(images).items())])
      images = self._extract.prepare(np.asarray(images))
    if isinstance(images, jax.Array):
      size = images.shape[0]
      if size % devices:
        images = jnp.pad(images, [(0, -size % devices)] + [(0, 0)] * (images.ndim - 1))
      images = jax.device_put(images, parallel.batch_sharding(mesh))  # a no-op when already split so
    else:
      images = np.asarray(images)
      size = images.shape[0] * jax.process_count()
      if size % devices:
        if jax.process_count() > 1:
          raise ValueError(
              f'{images.shape[0]} rows per process do not divide over the '
              f'{devices // jax.process_count()} devices of each process.'
          )
        images = np.pad(images, [(0, -size % devices)] + [(0, 0)] * (images.ndim - 1))
      images = parallel.shard_batch({'images': images}, mesh)['images']
    num_valid = size if num_valid is None else num_valid
    if not 0 <= num_valid <= size:
      raise ValueError(f'num_valid={num_valid} must lie in [0, {size}].')
    out = self._extract(images, num_valid)  # dispatched: runs while the previous batch is added up
    previous, self._pending = self._pending, (out, self._offset)
    self._offset += images.shape[0]
    if previous is not None:
      self._collect(*previous)

  def _collect(self, out, offset: int) -> None:
    spatial = ['spatial'] if self._spatial else []
    shards = {key: _local_shards(out[key]) for key in ['valid', 'features', *spatial, *self._keep]}
    for start, valid in sorted(shards['valid'].items()):
      self._moments.add(shards['features'][start][valid])
      if self._spatial:
        self._spatial.add(shards['spatial'][start][valid])
      if self._keep:
        self._order.append(offset + start + np.flatnonzero(valid))
        for key in self._keep:
          self._kept[key].append(shards[key][start][valid])

  def result(self) -> Statistics:
    if self._pending is not None:
      self._collect(*self._pending)
      self._pending = None
    moments, spatial = self._moments, self._spatial
    kept = {key: np.concatenate(rows) if rows else np.zeros((0, 0), np.float32) for key, rows in self._kept.items()}
    order = np.concatenate(self._order) if self._order else np.zeros(0, np.int64)
    if jax.process_count() > 1:
      moments, spatial = moments.merged(), spatial and spatial.merged()
      if self._keep:  # processes keep different numbers of rows: pad to the longest
        counts = _allgather(np.int64(order.shape[0]))[:, 0]
        longest = int(counts.max())
        pad = lambda a: np.concatenate([a, np.zeros((longest - a.shape[0], *a.shape[1:]), a.dtype)])
        order = np.concatenate([o[:c] for o, c in zip(_allgather(pad(order.astype(np.int64))), counts)])
        kept = {k: np.concatenate([v[:c] for v, c in zip(_allgather(pad(a)), counts)]) for k, a in kept.items()}
    if self._keep:
      position = np.argsort(order, kind='stable')
      kept = {k: a[position] for k, a in kept.items()}
    mu, sigma = moments.statistics()
    mu_s, sigma_s = spatial.statistics() if spatial else (None, None)
    return Statistics(
        mu, sigma, moments.count, kept.get('features'), kept.get('logits'), mu_s, sigma_s, self._extract.preprocess
    )


def compute_statistics(
    source: sources.ImageSource,
    extract: Extractor,
    *,
    batch_size: int = 50,
    keep_features: bool = False,
    keep_logits: bool = False,
    progress: bool = False,
) -> Statistics:
  """Statistics of every image of `source`, each counted once: global batches of `batch_size`
  (no more than the images, rounded up to a multiple of the devices; the last one padded and
  masked), each process reading its rows of each, the next batch read while one runs. Batches over
  MAX_BATCH_PIXELS are refused."""
  sources.check_pixels(source, batch_size)
  n, devices, processes = source.num_images, extract.mesh.devices.size, jax.process_count()
  global_batch = -(-min(batch_size, n) // devices) * devices
  local = global_batch // processes
  first = jax.process_index() * local  # parallel.shard_batch puts process p's rows p-th

  def rows(k: int) -> np.ndarray:
    start, stop = k * global_batch + first, min(k * global_batch + first + local, n)
    images = source.read(start, stop) if start < stop else np.zeros((0, *source.image_shape), np.uint8)
    images = np.concatenate([images, np.zeros((local - images.shape[0], *source.image_shape), np.uint8)])
    return extract.prepare(images)  # clean-fid's resize, on the host threads, while the devices run

  accumulator = Accumulator(extract, keep_features=keep_features, keep_logits=keep_logits)
  steps = -(-n // global_batch)
  with (
      _progress(n, source.name, progress and jax.process_index() == 0) as bar,
      concurrent.futures.ThreadPoolExecutor(1) as reader,
  ):
    upcoming = reader.submit(rows, 0)
    for k in range(steps):
      images = upcoming.result()
      if k + 1 < steps:
        upcoming = reader.submit(rows, k + 1)
      accumulator.update(images, num_valid=min(global_batch, n - k * global_batch), prepared=True)
      bar.update(min(global_batch, n - k * global_batch))
  return accumulator.result()


def _progress(total: int, name: str, enabled: bool):
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  return tqdm(
      total=total,
      desc=os.path.basename(name.rstrip('/')) or name,
      unit='img',
      disable=not enabled,
      file=sys.stderr,
      dynamic_ncols=True,
  )
