"""FID, Inception Score and KID with pytorch-fid's FID Inception, streaming over the mesh.

    model, variables = metrics.load_fid_inception()        # pytorch-fid's weights, downloaded once
    extractor = metrics.Extractor(model, variables, logits=True)   # one jitted step over the 'data' axis
    accumulator = metrics.Accumulator(extractor, keep_logits=True)
    for images in batches:             # NHWC, uint8 or floats in [0, 1]: a global jax.Array on the
      accumulator.update(images)       # mesh, or this process's rows as numpy
    stats = accumulator.result()       # mu, sigma (float64), num_images, logits
    fid = metrics.fid(stats, metrics.Statistics.load('reference.npz'))
    is_mean, is_std = metrics.inception_score(stats.logits)

What each number matches:
- FID: pytorch-fid 0.3.0 (`fid_score.py`): its preprocessing (PIL `convert('RGB')`, [0, 1],
  bilinear resize to 299, 2x - 1), its feature taps (`--dims` 64/192/768/2048, spatially
  averaged below 2048), mean and unbiased covariance, and the Frechet distance, here through
  `eigh` in float64 instead of scipy's `sqrtm`.
- Inception Score and KID: torch-fidelity 0.3.0's formulas and defaults (`metric_isc.py`,
  `metric_kid.py`, `defaults.py`), computed on the features of the same network pass as FID.
  IS uses torch-fidelity's 'logits_unbiased' (pool3 features times the 1008-way fc weight,
  no bias: `feature_extractor_inceptionv3.py` lines 179-182, the default
  `feature_layer_isc` of `defaults.py`); pytorch-fid's weights carry the same fc as
  torch-fidelity's (both are the 2015-12-05 TensorFlow graph). torch-fidelity feeds its
  network uint8 images resized with TF1's bilinear rule and scaled by (x - 128) / 128, so its
  own numbers differ from these slightly; the formulas are the same (tests/test_metrics.py).

Memory: the FID statistics are a count, a sum and a sum of outer products in float64 on the
host, O(d^2) whatever the number of images; IS and KID need every image's logits or features
(torch-fidelity keeps them too), kept only when asked for.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import http.client
import math
import os
import re
import sys
import tempfile
import urllib.request
import warnings
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from scipy.linalg import blas
from scipy import special

from inception_jax import convert, models, npz, parallel, preprocess, torch_files
from inception_jax.models.inception_v3 import FID_FEATURES

FID_WEIGHTS_URL = (
    'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth'
)
CACHE_ENV = 'INCEPTION_JAX_CACHE'  # where downloaded weights go; default ~/.cache/inception_jax
IMAGE_EXTENSIONS = ('bmp', 'jpg', 'jpeg', 'pgm', 'png', 'ppm', 'tif', 'tiff', 'webp')  # pytorch-fid's
METRICS = ('fid', 'is', 'kid')
# torch-fidelity's defaults (defaults.py): isc_splits, kid_subsets, kid_subset_size, kid_degree,
# kid_gamma (None: 1 / dims), kid_coef0, rng_seed.
IS_SPLITS, KID_SUBSETS, KID_SUBSET_SIZE, KID_DEGREE, KID_COEF0, SEED = 10, 100, 1000, 3, 1, 2020
# Budgets, checked before anything is decoded: a 0.5 MB PNG of 13,000^2 pixels decodes to 507 MB,
# and pytorch-fid resizes every image to 299x299 anyway.
MAX_IMAGE_PIXELS = 2**25  # 33.5 M pixels (8K UHD fits): 96 MiB decoded
MAX_BATCH_PIXELS = 2**27  # 134 M pixels a batch: 384 MiB decoded, 1.5 GiB as float32 on the devices
MAX_STATISTICS_DIMS = 8192  # a float64 sigma of 512 MiB; pytorch-fid's largest is 2048


# Weights.


def fid_weights_file(cache_dir: str | None = None, url: str | None = None) -> str:
  """pytorch-fid's weight file, downloaded once and checked against the sha256 prefix in its name.

  Looks first where pytorch-fid's own download goes (torch.hub's checkpoints folder), then
  in `cache_dir` (default $INCEPTION_JAX_CACHE or ~/.cache/inception_jax).
  """
  url = url or FID_WEIGHTS_URL
  name = os.path.basename(url)
  cache_home = os.environ.get('XDG_CACHE_HOME', os.path.join(os.path.expanduser('~'), '.cache'))
  torch_home = os.environ.get('TORCH_HOME', os.path.join(cache_home, 'torch'))  # as torch.hub finds it
  cache_dir = cache_dir or os.environ.get(CACHE_ENV) or os.path.join(cache_home, 'inception_jax')
  for folder in (os.path.join(torch_home, 'hub', 'checkpoints'), cache_dir):
    if os.path.isfile(os.path.join(folder, name)):
      return os.path.join(folder, name)
  try:
    os.makedirs(cache_dir, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=cache_dir, prefix=name + '.', suffix='.partial')
  except OSError as e:
    raise ValueError(
        f'cannot make the cache folder {cache_dir} for {name} ({e.strerror}): set ${CACHE_ENV} to a folder '
        f'you can write, or pass --weights=PATH/{name} (weights= in Python).'
    ) from None
  target, received = os.path.join(cache_dir, name), 0
  try:
    digest = hashlib.sha256()
    with os.fdopen(fd, 'wb') as f, urllib.request.urlopen(url, timeout=60) as response:
      while chunk := response.read(1 << 20):
        digest.update(chunk)
        f.write(chunk)
        received += len(chunk)
      size = response.headers.get('Content-Length', '')
      if size.isdigit() and received < int(size):  # http.client can end a short body silently
        raise http.client.IncompleteRead(b'', int(size) - received)
    # torch.hub's check: the hex digits after the last '-' of the name start the sha256.
    prefix = re.search(r'-([a-f0-9]+)\.', name)
    if prefix and not digest.hexdigest().startswith(prefix.group(1)):
      raise ValueError(
          f'{url} downloaded with sha256 {digest.hexdigest()[:16]}..., not {prefix.group(1)}...: '
          'a damaged or different file; not kept.'
      )
    os.replace(partial, target)
  except (OSError, http.client.HTTPException) as e:
    if isinstance(e, http.client.IncompleteRead):
      e = f'interrupted after {received + len(e.partial):,} bytes'
    raise ValueError(
        f'could not download {name} from {url} ({e}); fetch it elsewhere and pass '
        f'--weights=PATH/{name} (or weights= in Python).'
    ) from None
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return target


def load_fid_inception(weights: str | None = None):
  """(model, variables) of pytorch-fid's FID Inception.

  `weights`: pytorch-fid's .pth file (read without pickle's code execution and converted),
  a folder written by `scripts.convert_weights --model=inception_v3_fid`, or None to use
  (and download once) pytorch-fid's published file.
  """
  weights = weights or fid_weights_file()
  if os.path.isdir(weights):
    return models.load_pretrained('inception_v3_fid', weights)
  if not os.path.isfile(weights):
    raise ValueError(f'--weights={weights}: no such file or folder.')
  model, variables, missing, _ = convert.convert_state_dict(
      'inception_v3_fid', torch_files.load_state_dict(weights), source='pytorch_fid'
  )
  if missing or model.num_classes != 1008:
    raise ValueError(
        f"{weights} is not pytorch-fid's FID Inception ({model.num_classes} classes, not 1008; "
        f'{len(missing)} variable(s) missing).'
    )
  return model, jax.tree.map(jnp.asarray, variables)


# Extraction: one jitted, sharded step.


@functools.cache
def _extract_step(model, mesh, dims: int, resize: bool, logits: bool):
  batch = parallel.batch_sharding(mesh)

  def step(variables, images, num_valid):
    x = images.astype(jnp.float32) / 255 if images.dtype == jnp.uint8 else images.astype(jnp.float32)
    # FID is defined in float32: no bfloat16 passes (TPU) or TF32 (GPU) in the convolutions.
    with jax.default_matmul_precision('float32'):
      x = preprocess.fid_inputs(x) if resize else 2 * x - 1
      _, features = model.apply(variables, x, train=False)
      tap = features[FID_FEATURES[dims]]
      # pytorch-fid averages the smaller taps' maps (adaptive_avg_pool2d); XLA drops the layers after a tap.
      out = {
          'features': tap.mean(axis=(1, 2)) if tap.ndim == 4 else tap,
          'valid': jnp.arange(images.shape[0]) < num_valid,
      }
      if logits:
        out['logits'] = features['pre_logits'] @ variables['params']['fc']['kernel']
    return out

  return jax.jit(step, in_shardings=(parallel.replicated(mesh), batch, parallel.replicated(mesh)), out_shardings=batch)


class Extractor:
  """pytorch-fid's `InceptionV3` feature extractor as one jitted step over the mesh's 'data' axis.

  `extractor(images, num_valid)`: a global batch (NHWC, uint8 or floats in [0, 1], batch
  divisible by the devices) -> global arrays 'features' (batch, dims), 'valid' (row <
  num_valid) and, with `logits=True`, 'logits' (batch, 1008; pool3 times the fc weight,
  torch-fidelity's 'logits_unbiased'). `resize=False` skips pytorch-fid's resize to 299
  (its `resize_input`): images then go in at their own size, at least 75x75.
  """

  def __init__(self, model, variables, *, dims: int = 2048, mesh=None, resize: bool = True, logits: bool = False):
    if dims not in FID_FEATURES:
      raise ValueError(f"dims must be one of pytorch-fid's {sorted(FID_FEATURES)}, got {dims}.")
    self.mesh = mesh if mesh is not None else parallel.make_mesh()
    self.dims, self.logits = dims, logits
    self.variables = jax.device_put(variables, parallel.replicated(self.mesh))
    self._step = _extract_step(model, self.mesh, dims, resize, logits)

  def __call__(self, images, num_valid):
    return self._step(self.variables, images, np.int32(num_valid))


# Statistics.


@dataclasses.dataclass(frozen=True)
class Statistics:
  """What the metrics need of one set of images: pytorch-fid's `mu` and `sigma` (float64), and,
  when kept, every image's features (for KID) and logits (for IS), in the images' order."""

  mu: np.ndarray
  sigma: np.ndarray
  num_images: int | None = None  # None: a statistics file that does not say
  features: np.ndarray | None = None
  logits: np.ndarray | None = None

  @property
  def dims(self) -> int:
    return self.mu.shape[0]

  def save(self, path: str) -> None:
    """pytorch-fid's `--save-stats` file (mu, sigma), plus num_images."""
    extra = {} if self.num_images is None else {'num_images': np.int64(self.num_images)}
    np.savez_compressed(path, mu=self.mu, sigma=self.sigma, **extra)

  @classmethod
  def load(cls, path: str) -> Statistics:
    """A statistics file (pytorch-fid's or `save`'s), read by `npz.Archive` (no pickle; headers
    checked before any data is read) and checked: a finite mean of at most MAX_STATISTICS_DIMS
    dimensions, a finite symmetric covariance, and a count if any."""
    with npz.Archive(path) as archive:
      if not {'mu', 'sigma'} <= set(archive.keys):
        raise ValueError(f'{path} holds {npz.short(sorted(archive.keys))}, not FID statistics (mu, sigma).')
      mu, sigma = archive.header('mu'), archive.header('sigma')
      count = archive.header('num_images') if 'num_images' in archive.keys else None
      if not (
          mu.dtype.kind in 'fiu' and sigma.dtype.kind in 'fiu' and len(mu.shape) == 1 and sigma.shape == mu.shape * 2
      ):
        raise ValueError(
            f'{path}: mu ({npz.short(mu.dtype)} {npz.short(mu.shape)}) and sigma ({npz.short(sigma.dtype)} '
            f'{npz.short(sigma.shape)}) are not a mean and its covariance.'
        )
      if not 0 < mu.shape[0] <= MAX_STATISTICS_DIMS:
        raise ValueError(
            f'{path}: {mu.shape[0]}-d statistics, not between 1 and the budget of {MAX_STATISTICS_DIMS} dimensions; '
            "pytorch-fid's are 64-, 192-, 768- or 2048-d."
        )
      if count is not None and (count.shape != () or count.dtype.kind not in 'iu'):
        raise ValueError(
            f'{path}: num_images is {npz.short(count.dtype)} of shape {npz.short(count.shape)}, not a count; write the file '
            'with Statistics.save, or without num_images.'
        )
      mu, sigma = (np.asarray(archive.read(key), np.float64) for key in ('mu', 'sigma'))
      num_images = None if count is None else int(archive.read('num_images'))
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
      raise ValueError(f'{path}: mu or sigma holds NaN or infinity; compute the statistics again (--save_stats).')
    asymmetry = np.abs(sigma - sigma.T).max()
    if asymmetry > 1e-6 * np.abs(sigma).max():  # float64 round-off is 1e-16 of it
      raise ValueError(
          f'{path}: sigma is not symmetric (|sigma - sigma.T| up to {asymmetry:.3g}), so not a covariance; '
          'compute the statistics again (--save_stats).'
      )
    if num_images is not None and num_images < 0:
      raise ValueError(f'{path}: num_images is {num_images}, not a count.')
    return cls(mu, sigma, num_images)


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

  `result()`: `Statistics` over all processes (under jax.distributed, every process gets the
  same). `keep_features` (KID) and `keep_logits` (IS) keep every image's rows.
  """

  def __init__(self, extract: Extractor, *, keep_features: bool = False, keep_logits: bool = False):
    if keep_logits and not extract.logits:
      raise ValueError('keep_logits needs an Extractor built with logits=True.')
    self._extract = extract
    self._keep = [k for k, keep in (('features', keep_features), ('logits', keep_logits)) if keep]
    self._moments = _Moments(extract.dims)
    self._kept = {k: [] for k in self._keep}
    self._order = []  # global positions of the kept rows: orders them across processes
    self._offset, self._pending = 0, None

  def update(self, images, num_valid: int | None = None) -> None:
    mesh = self._extract.mesh
    devices = mesh.devices.size
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
    shards = {key: _local_shards(out[key]) for key in ['valid', 'features', *self._keep]}
    for start, valid in sorted(shards['valid'].items()):
      self._moments.add(shards['features'][start][valid])
      if self._keep:
        self._order.append(offset + start + np.flatnonzero(valid))
        for key in self._keep:
          self._kept[key].append(shards[key][start][valid])

  def result(self) -> Statistics:
    if self._pending is not None:
      self._collect(*self._pending)
      self._pending = None
    moments = self._moments
    kept = {key: np.concatenate(rows) if rows else np.zeros((0, 0), np.float32) for key, rows in self._kept.items()}
    order = np.concatenate(self._order) if self._order else np.zeros(0, np.int64)
    if jax.process_count() > 1:
      merged = _Moments(moments.total.shape[0])
      merged.count = int(_allgather(np.int64(moments.count)).sum())
      merged.total = _allgather(moments.total).sum(axis=0)
      merged.outer = np.asfortranarray(_allgather(moments.outer).sum(axis=0))
      moments = merged
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
    return Statistics(mu, sigma, moments.count, kept.get('features'), kept.get('logits'))


# The metrics.


@jax.jit
def _frechet(mu1, sigma1, mu2, sigma2):
  # tr sqrt(S1 S2) = tr sqrt(R S2 R) with R = sqrt(S1): similar matrices, and R S2 R is
  # symmetric positive semi-definite, so eigh suffices (no complex values). Round-off can
  # leave tiny negative eigenvalues: clipped to 0.
  w, v = jnp.linalg.eigh(sigma1)
  root = (v * jnp.sqrt(jnp.clip(w, 0))) @ v.T
  tr_covmean = jnp.sqrt(jnp.clip(jnp.linalg.eigvalsh(root @ sigma2 @ root), 0)).sum()
  diff = mu1 - mu2
  return diff @ diff + jnp.trace(sigma1) + jnp.trace(sigma2) - 2 * tr_covmean


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """pytorch-fid's `calculate_frechet_distance`, in float64 on the accelerator through `eigh`:
  ||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrt(S1 S2))."""
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(
        f'statistics of different dimensions: {mu1.shape[0]}-d (sigma {sigma1.shape}) and '
        f'{mu2.shape[0]}-d (sigma {sigma2.shape}); compute both with the same --dims.'
    )
  if not all(np.isfinite(a).all() for a in (mu1, sigma1, mu2, sigma2)):
    raise ValueError('the statistics contain NaN or infinity.')
  # TPUs have no float64 eigendecomposition; elsewhere it runs where JAX runs.
  device = jax.local_devices(backend='cpu' if jax.default_backend() == 'tpu' else None)[0]
  with jax.enable_x64(True):
    args = [jax.device_put(np.asarray(a, np.float64), device) for a in (mu1, sigma1, mu2, sigma2)]
    distance = float(_frechet(*args))
  if not math.isfinite(distance):
    largest = max(np.abs(a).max() for a in (mu1, sigma1, mu2, sigma2))
    raise ValueError(
        f'the Fréchet distance is {distance}: statistics with entries up to {largest:.3g} overflow float64; '
        'check that both are FID statistics.'
    )
  return distance


def fid(stats1: Statistics, stats2: Statistics) -> float:
  return frechet_distance(stats1.mu, stats1.sigma, stats2.mu, stats2.sigma)


def inception_score(logits, splits: int = IS_SPLITS, shuffle: bool = True, seed: int = SEED) -> tuple[float, float]:
  """(mean, std) of the Inception Score over `splits` parts, as torch-fidelity's
  `isc_features_to_metric` (metric_isc.py, lines 11-34): rows shuffled by
  `np.random.RandomState(seed).permutation`, float64 softmax, split i is rows
  [i N / splits, (i + 1) N / splits), score exp(mean KL(p || mean p)), population std."""
  logits = np.asarray(logits, np.float64)
  n = logits.shape[0]
  if logits.ndim != 2 or n < splits:
    raise ValueError(f'the Inception Score over {splits} splits needs at least {splits} images, got {n}.')
  if shuffle:
    logits = logits[np.random.RandomState(seed).permutation(n)]
  log_p = special.log_softmax(logits, axis=1)
  p = np.exp(log_p)
  scores = []
  for i in range(splits):
    part = slice(i * n // splits, (i + 1) * n // splits)
    q = p[part].mean(axis=0)
    scores.append(np.exp((p[part] * (log_p[part] - np.log(q))).sum(axis=1).mean()))
  return float(np.mean(scores)), float(np.std(scores))


def kernel_inception_distance(
    features1,
    features2,
    *,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    degree: int = KID_DEGREE,
    gamma: float | None = None,
    coef0: float = KID_COEF0,
    seed: int = SEED,
) -> tuple[float, float]:
  """(mean, std) of the unbiased MMD^2 with the kernel (gamma x.y + coef0)^degree over `subsets`
  random subsets, as torch-fidelity's `kid_features_to_metric` (metric_kid.py, lines 72-117,
  with `mmd2` and `polynomial_kernel` of lines 16-62): one `np.random.RandomState(seed)`, each
  subset drawn by `choice(n, subset_size, replace=False)` from the first set, then the second.
  Computed in float64 (torch-fidelity: float32)."""
  f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
  if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
    raise ValueError(f'KID needs features of the same dimension, got {f1.shape} and {f2.shape}.')
  n1, n2 = f1.shape[0], f2.shape[0]
  if subset_size < 2 or n1 < subset_size or n2 < subset_size:
    raise ValueError(
        f'the KID subset size {subset_size} must lie in [2, number of images] (first set: {n1}, '
        f'second: {n2}); pass a smaller --kid_subset_size.'
    )
  gamma = 1.0 / f1.shape[1] if gamma is None else gamma
  rng = np.random.RandomState(seed)
  m = subset_size
  mmds = []
  for _ in range(subsets):
    x = f1[rng.choice(n1, m, replace=False)]
    y = f2[rng.choice(n2, m, replace=False)]
    k_xx, k_yy, k_xy = ((a @ b.T * gamma + coef0) ** degree for a, b in ((x, x), (y, y), (x, y)))
    off_diagonal = k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)
    mmds.append(off_diagonal / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))
  return float(np.mean(mmds)), float(np.std(mmds))


# Image sources: a folder, an .npz of images, a TFDS split.


class ImageSource(Protocol):
  """`num_images` uint8 images of `image_shape` (H, W, 3), read in increasing ranges."""

  name: str
  num_images: int
  image_shape: tuple[int, int, int]

  def read(self, start: int, stop: int) -> np.ndarray:
    ...


@functools.cache
def _threads() -> concurrent.futures.ThreadPoolExecutor:
  return concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1))  # PIL decodes outside the GIL


class FolderImages:
  """The images of a folder, as pytorch-fid finds (`*.EXT` for its extensions, sorted) and reads them
  (PIL, `convert('RGB')`). Every header is read up front, so an unreadable file, one that is not
  a regular file (a FIFO would block) or a size that differs is reported before any work."""

  def __init__(self, path: str):
    import pathlib  # pylint: disable=g-import-not-at-top

    self.name = path
    folder = pathlib.Path(path)
    self.files = sorted(file for ext in IMAGE_EXTENSIONS for file in folder.glob(f'*.{ext}'))
    if not self.files:
      raise ValueError(f'{path} holds no images (pytorch-fid reads *.{", *.".join(IMAGE_EXTENSIONS)}).')
    from PIL import Image  # pylint: disable=g-import-not-at-top

    with warnings.catch_warnings():  # PIL's warning from 89 M pixels: _check_pixels refuses them all
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      sizes = list(_threads().map(_image_size, self.files))
    for file, size in zip(self.files, sizes):
      if size != sizes[0]:
        raise ValueError(
            f'images of different sizes in {path}: {self.files[0].name} is {sizes[0][0]}x{sizes[0][1]}, '
            f'{file.name} is {size[0]}x{size[1]} (width x height); pytorch-fid needs one size per folder.'
        )
    self.num_images = len(self.files)
    self.image_shape = (sizes[0][1], sizes[0][0], 3)

  def read(self, start: int, stop: int) -> np.ndarray:
    images = list(_threads().map(_decode, self.files[start:stop]))
    for file, image in zip(self.files[start:stop], images):
      if image.shape != self.image_shape:  # a header that lied
        raise ValueError(f"{file} decodes to {image.shape}, the folder's images are {self.image_shape}.")
    return np.stack(images) if images else np.zeros((0, *self.image_shape), np.uint8)


def _image_size(file) -> tuple[int, int]:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  with npz.open_regular(file) as f:
    try:
      with Image.open(f) as image:
        return image.size
    except Exception as e:  # PIL raises several types for damaged files
      raise ValueError(f'cannot read image {file}: {type(e).__name__}: {e}') from None


def _decode(file) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  with npz.open_regular(file) as f:
    try:
      with Image.open(f) as image:
        return np.asarray(image.convert('RGB'))
    except Exception as e:
      raise ValueError(f'cannot read image {file}: {type(e).__name__}: {e}') from None


class NpzImages:
  """`arr_0` of an .npz (NHWC uint8, as the ADM / guided-diffusion sample and reference batches),
  streamed from the archive a batch at a time: memory does not grow with the file. Read by
  `npz.Archive`: the header is checked against the archive before any image is decompressed."""

  def __init__(self, path: str):
    self.name = path
    self._archive = npz.Archive(path)
    header = self._archive.header('arr_0')
    shape = header.shape
    if (
        header.dtype != np.uint8
        or len(shape) != 4
        or shape[-1] not in (1, 3)
        or 0 in shape[1:3]
        or header.fortran_order
    ):
      self._archive.close()
      raise ValueError(
          f'{path}: arr_0 is {npz.short(header.dtype)} of shape {npz.short(shape)}{" in Fortran order" * header.fortran_order}; '
          'expected NHWC uint8 images with 1 or 3 channels.'
      )
    self.num_images, self._shape = shape[0], shape[1:]
    self.image_shape = (*shape[1:3], 3)
    self._stream, self._next = None, 0

  def read(self, start: int, stop: int) -> np.ndarray:
    if stop > self.num_images:
      raise ValueError(f'{self.name}: arr_0 ends before image {stop} of {self.num_images}.')
    if self._stream is None or start < self._next:
      if self._stream is not None:
        self._stream.close()
      _, self._stream = self._archive.stream('arr_0')
      self._next = 0
    row = math.prod(self._shape)
    self._stream.skip((start - self._next) * row)  # other processes' rows
    data = self._stream.read((stop - start) * row)
    self._next = stop
    images = np.frombuffer(data, np.uint8).reshape(stop - start, *self._shape)
    return np.repeat(images, 3, axis=-1) if self._shape[-1] == 1 else images


class TfdsImages:
  """The 'image' feature of a TFDS split (`tfds:NAME[:SPLIT]`, default split 'train'), in the
  split's order; grey images become RGB as PIL's convert('RGB') makes them. Prepared as the
  training data are (inception_jax.data.prepare: offline from $TFDS_MANUAL_DIR)."""

  def __init__(self, spec: str):
    from inception_jax import data  # pylint: disable=g-import-not-at-top
    import ml_collections  # pylint: disable=g-import-not-at-top

    _, name, *split = spec.split(':', 2)
    self.name, self._split = spec, (split[0] if split else 'train')
    try:
      # The fields data.prepare reads; empty: TFDS's data dir, $TFDS_MANUAL_DIR.
      builder = data.prepare(ml_collections.ConfigDict({'dataset': name, 'data_dir': '', 'manual_dir': ''}))
    except ValueError as e:  # data.prepare's message names the dataset and near names
      raise ValueError(f'{str(e).splitlines()[0].rstrip(".")} (in {spec}; the form is tfds:NAME[:SPLIT]).') from None
    except data.DatasetUnavailableError as e:
      raise ValueError(str(e).splitlines()[0]) from None
    if 'image' not in builder.info.features:
      raise ValueError(f'{spec}: the dataset has no \'image\' feature (it has {", ".join(builder.info.features)}).')
    try:
      self.num_images = builder.info.splits[self._split].num_examples
    except Exception:  # pylint: disable=broad-except
      raise ValueError(f'{spec}: no split {self._split!r}; splits: {", ".join(builder.info.splits)}.') from None
    if not self.num_images:
      raise ValueError(f'{spec} holds no images.')
    dataset = builder.as_dataset(split=self._split, shuffle_files=False).map(lambda example: example['image'])
    self._images, self._position = dataset.as_numpy_iterator(), 0
    self._peeked = self._rgb(next(self._images))
    self.image_shape = self._peeked.shape

  def _rgb(self, image: np.ndarray) -> np.ndarray:
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image

  def _next_image(self) -> np.ndarray:
    image, self._peeked = (self._peeked, None) if self._peeked is not None else (self._rgb(next(self._images)), None)
    if image.shape != self.image_shape:
      raise ValueError(
          f'images of different sizes in {self.name}: image 0 is {self.image_shape}, '
          f'image {self._position} is {image.shape}.'
      )
    self._position += 1
    return image

  def read(self, start: int, stop: int) -> np.ndarray:
    if start < self._position:
      raise ValueError(f'{self.name} is read once, in order.')
    while self._position < start:  # other processes' rows
      self._next_image()
    images = [self._next_image() for _ in range(start, stop)]
    return np.stack(images) if images else np.zeros((0, *self.image_shape), np.uint8)


def open_path(path: str) -> ImageSource | Statistics:
  """A folder of images, an .npz of statistics (mu, sigma) or of images (arr_0), or tfds:NAME[:SPLIT]."""
  if path.startswith('tfds:'):
    source = TfdsImages(path)
  elif os.path.isdir(path):
    source = FolderImages(path)
  elif not os.path.exists(path):
    raise ValueError(f'{path}: no such file or folder.')
  elif path.endswith('.npz'):
    with npz.Archive(path) as archive:
      keys = set(archive.keys)
    if {'mu', 'sigma'} <= keys:
      return Statistics.load(path)
    if 'arr_0' not in keys:
      raise ValueError(f'{path} holds {npz.short(sorted(keys))}: neither statistics (mu, sigma) nor images (arr_0).')
    source = NpzImages(path)
  else:
    raise ValueError(f'{path} is not a folder of images, an .npz (statistics or images) or tfds:NAME[:SPLIT].')
  _check_pixels(source)
  return source


def _check_pixels(source: ImageSource, batch_size: int = 1) -> None:
  """Refuses images over MAX_IMAGE_PIXELS, and batches of min(batch_size, images) over
  MAX_BATCH_PIXELS, from their shape: before any image is decoded."""
  height, width, _ = source.image_shape
  pixels, batch = height * width, min(batch_size, source.num_images)
  if pixels > MAX_IMAGE_PIXELS:
    raise ValueError(
        f'{source.name}: images of {width}x{height} pixels are over the budget of {MAX_IMAGE_PIXELS:,} pixels per '
        f'image ({3 * pixels / 2**20:,.0f} MiB each, decoded); pytorch-fid resizes them to 299x299: shrink them first.'
    )
  if batch * pixels > MAX_BATCH_PIXELS:
    raise ValueError(
        f'{source.name}: a batch of {batch} images of {width}x{height} pixels is {batch * pixels:,} pixels, over the '
        f'budget of {MAX_BATCH_PIXELS:,}; pass --batch_size={MAX_BATCH_PIXELS // pixels} or less (batch_size= in Python).'
    )


def compute_statistics(
    source: ImageSource,
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
  _check_pixels(source, batch_size)
  n, devices, processes = source.num_images, extract.mesh.devices.size, jax.process_count()
  global_batch = -(-min(batch_size, n) // devices) * devices
  local = global_batch // processes
  first = jax.process_index() * local  # parallel.shard_batch puts process p's rows p-th

  def rows(k: int) -> np.ndarray:
    start, stop = k * global_batch + first, min(k * global_batch + first + local, n)
    images = source.read(start, stop) if start < stop else np.zeros((0, *source.image_shape), np.uint8)
    return np.concatenate([images, np.zeros((local - images.shape[0], *source.image_shape), np.uint8)])

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
      accumulator.update(images, num_valid=min(global_batch, n - k * global_batch))
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


# What scripts.fid runs.


def calculate_metrics(
    paths: list[str],
    *,
    metrics: tuple[str, ...] = ('fid',),
    weights: str | None = None,
    batch_size: int = 50,
    dims: int = 2048,
    is_splits: int = IS_SPLITS,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    num_devices: int = -1,
    resize: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
  """FID between two paths, IS of the first, KID between the two (see `open_path` for paths).

  Returns the metrics asked for ('fid'; 'inception_score_mean'/'_std'; 'kid_mean'/'_std')
  and 'num_images_1' (and '_2'; None for a statistics file that does not record it).
  """
  unknown = set(metrics) - set(METRICS)
  if unknown or not metrics:
    raise ValueError(f'unknown metrics {sorted(unknown)}; choose from {", ".join(METRICS)}.')
  if len(paths) != 2 and not (len(paths) == 1 and set(metrics) == {'is'}):
    raise ValueError(f'give two paths (one is enough for --metrics=is alone), got {len(paths)}.')
  if dims not in FID_FEATURES:
    raise ValueError(f'--dims must be one of {sorted(FID_FEATURES)}, got {dims}.')
  sides = [open_path(p) for p in paths]  # every path checked before any work
  for path, side in zip(paths, sides):
    if not isinstance(side, Statistics):
      if side.num_images < 2:
        raise ValueError(f'{path}: FID statistics need at least 2 images, got {side.num_images}.')
      _check_pixels(side, batch_size)
    if isinstance(side, Statistics) and side.dims != dims and not all(isinstance(s, Statistics) for s in sides):
      raise ValueError(f'{path} holds {side.dims}-d statistics, but --dims={dims}.')
    if isinstance(side, Statistics) and ('kid' in metrics or ('is' in metrics and side is sides[0])):
      raise ValueError(
          f'{path} is a statistics file; {"KID" if "kid" in metrics else "the Inception Score"} ' 'needs images.'
      )
  extractor = None
  if not all(isinstance(s, Statistics) for s in sides):
    model, variables = load_fid_inception(weights)
    extractor = Extractor(
        model, variables, dims=dims, mesh=parallel.make_mesh(num_devices), resize=resize, logits='is' in metrics
    )
  stats = [
      side
      if isinstance(side, Statistics)
      else compute_statistics(
          side,
          extractor,
          batch_size=batch_size,
          keep_features='kid' in metrics,
          keep_logits='is' in metrics and i == 0,
          progress=progress,
      )
      for i, side in enumerate(sides)
  ]
  result = {}
  if 'fid' in metrics:
    result['fid'] = fid(*stats)
  if 'is' in metrics:
    result['inception_score_mean'], result['inception_score_std'] = inception_score(stats[0].logits, is_splits)
  if 'kid' in metrics:
    result['kid_mean'], result['kid_std'] = kernel_inception_distance(
        stats[0].features, stats[1].features, subsets=kid_subsets, subset_size=kid_subset_size
    )
  for i, s in enumerate(stats):
    result[f'num_images_{i + 1}'] = s.num_images
  return result


def save_statistics(
    path: str,
    out: str,
    *,
    weights: str | None = None,
    batch_size: int = 50,
    dims: int = 2048,
    num_devices: int = -1,
    resize: bool = True,
    progress: bool = False,
) -> Statistics:
  """pytorch-fid's --save-stats: the statistics of the images at `path`, written to `out` (.npz)."""
  out = out if out.endswith('.npz') else out + '.npz'  # what np.savez writes
  if os.path.exists(out):
    raise ValueError(f'{out} exists; give a new file.')
  source = open_path(path)
  if isinstance(source, Statistics):
    raise ValueError(f'{path} already holds statistics.')
  if source.num_images < 2:
    raise ValueError(f'{path}: FID statistics need at least 2 images, got {source.num_images}.')
  _check_pixels(source, batch_size)
  model, variables = load_fid_inception(weights)
  extractor = Extractor(model, variables, dims=dims, mesh=parallel.make_mesh(num_devices), resize=resize)
  stats = compute_statistics(source, extractor, batch_size=batch_size, progress=progress)
  if jax.process_index() == 0:
    stats.save(out)
  return stats
