"""The distances and scores, on features: the Frechet distance (FID), the Inception Score, KID."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

if TYPE_CHECKING:
  from inception_jax.metrics.features import Statistics

# torch-fidelity's defaults (defaults.py): isc_splits, kid_subsets, kid_subset_size, kid_degree,
# kid_gamma (None: 1 / dims), kid_coef0, rng_seed.
IS_SPLITS, KID_SUBSETS, KID_SUBSET_SIZE, KID_DEGREE, KID_COEF0, SEED = 10, 100, 1000, 3, 1, 2020
ADM_IS_SPLIT_SIZE = 5000  # evaluator.py L179: compute_inception_score(activations, split_size=5000)


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
    with jax.default_matmul_precision('highest'):
      distance = float(_frechet(*args))
  if not math.isfinite(distance):
    largest = max(np.abs(a).max() for a in (mu1, sigma1, mu2, sigma2))
    raise ValueError(
        f'the Fréchet distance is {distance}: statistics with entries up to {largest:.3g} overflow float64; '
        'check that both are FID statistics.'
    )
  return distance


def fid(stats1: Statistics, stats2: Statistics) -> float:
  check_comparable(stats1, stats2)
  return frechet_distance(stats1.mu, stats1.sigma, stats2.mu, stats2.sigma)


def sfid(stats1: Statistics, stats2: Statistics) -> float:
  """The ADM evaluator's sFID: the Frechet distance of the spatial features' statistics (mu_s,
  sigma_s), computed as FID's (evaluator.py L155-158 and L164-172)."""
  check_comparable(stats1, stats2)
  for stats in (stats1, stats2):
    if stats.mu_s is None:
      raise ValueError(
          'sFID needs spatial statistics (mu_s, sigma_s) on both sides: compute them from images, or use a '
          'reference batch that holds them (--save_stats --suite=adm writes them).'
      )
  return frechet_distance(stats1.mu_s, stats1.sigma_s, stats2.mu_s, stats2.sigma_s)


def check_comparable(stats1: Statistics, stats2: Statistics) -> None:
  """Statistics made with different preprocessings measure different things: refused."""
  if None not in (stats1.preprocess, stats2.preprocess) and stats1.preprocess != stats2.preprocess:
    raise ValueError(
        f'statistics made with --preprocess={stats1.preprocess} and --preprocess={stats2.preprocess} are not '
        'comparable; compute both with the same preprocessing.'
    )


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


def inception_score_adm(logits, split_size: int = ADM_IS_SPLIT_SIZE) -> float:
  """The ADM evaluator's Inception Score (`Evaluator.compute_inception_score`, evaluator.py
  L179-192): softmax of the logits (pool3 times the fc weight, no bias), consecutive splits
  of `split_size` rows in the images' order (the last one shorter), no shuffle, the mean of
  exp(mean KL(p || mean p)) over the splits. Computed in float64 from the logits (the
  evaluator: float32 softmax probabilities)."""
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or logits.shape[0] < 1:
    raise ValueError(f'the Inception Score needs the logits of at least 1 image, got shape {logits.shape}.')
  log_p = special.log_softmax(logits, axis=1)
  scores = []
  for start in range(0, logits.shape[0], split_size):
    part = log_p[start : start + split_size]
    log_q = np.log(np.exp(part).mean(axis=0))
    scores.append(np.exp((np.exp(part) * (part - log_q)).sum(axis=1).mean()))
  return float(np.mean(scores))


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
