"""What scripts.fid runs: metrics between paths, and statistics files."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from inception_jax import files, npz, parallel
from inception_jax.metrics import manifold, preprocessing, sources
from inception_jax.metrics.distances import IS_SPLITS, KID_SUBSET_SIZE, KID_SUBSETS
from inception_jax.metrics.distances import fid, inception_score, inception_score_adm, kernel_inception_distance, sfid
from inception_jax.metrics.features import Extractor, Statistics, compute_statistics
from inception_jax.metrics.sources import FolderImages, ImageSource, NpzImages, TfdsImages
from inception_jax.metrics.weights import load_fid_inception
from inception_jax.models.inception_v3 import FID_FEATURES

METRICS = ('fid', 'sfid', 'is', 'kid', 'pr')
# The ADM evaluator's row (evaluations/evaluator.py main, L52-63): what --suite=adm computes, in its order.
ADM_METRICS = ('is', 'fid', 'sfid', 'pr')


def open_path(path: str) -> ImageSource | Statistics:
  """A folder of images, an .npz of statistics (mu, sigma) or of images (arr_0; an ADM reference
  batch holding both is images whose `statistics` are the file's), or tfds:NAME[:SPLIT]."""
  if path.startswith('tfds:'):
    source = TfdsImages(path)
  elif os.path.isdir(path):
    source = FolderImages(path)
  elif not os.path.exists(path):
    raise ValueError(f'{path}: no such file or folder.')
  elif path.endswith('.npz'):
    with npz.Archive(path) as archive:
      keys = set(archive.keys)
    statistics = Statistics.load(path) if keys & {'mu', 'sigma', 'mu_s', 'sigma_s'} else None
    if 'arr_0' in keys and statistics and statistics.preprocess is None:
      statistics = dataclasses.replace(statistics, preprocess='tf1')  # ADM's reference batches: the evaluator's
    if 'arr_0' not in keys:
      if statistics:
        return statistics
      raise ValueError(f'{path} holds {npz.short(sorted(keys))}: neither statistics (mu, sigma) nor images (arr_0).')
    source = NpzImages(path, statistics)
  else:
    raise ValueError(f'{path} is not a folder of images, an .npz (statistics or images) or tfds:NAME[:SPLIT].')
  sources.check_pixels(source)
  return source


def _preprocessing(suite: str | None, preprocess: str | None, dims: int) -> str:
  """The preprocessing a run uses: 'tf1' under suite='adm' (which also needs pool3), else
  `preprocess` (default 'pytorch_fid'), checked."""
  if suite not in (None, 'adm'):
    raise ValueError(f"unknown suite {suite!r}; the one suite is 'adm' (guided-diffusion's evaluator).")
  if suite == 'adm':
    if preprocess not in (None, 'tf1'):
      raise ValueError(f'--suite=adm preprocesses as the evaluator does (tf1), not {preprocess}.')
    if dims != 2048:
      raise ValueError(f"--suite=adm uses the evaluator's pool3 features (--dims=2048), not --dims={dims}.")
    return 'tf1'
  return preprocessing.check(preprocess or 'pytorch_fid')


def _check_positive(**sizes: int | None) -> None:
  """Sizes checked before any work (None: not used)."""
  for name, value in sizes.items():
    if value is not None and value < 1:
      raise ValueError(f'--{name} must be positive, got {value}.')


def calculate_metrics(
    paths: list[str],
    *,
    metrics: tuple[str, ...] = ('fid',),
    suite: str | None = None,
    preprocess: str | None = None,
    weights: str | None = None,
    batch_size: int = 50,
    dims: int = 2048,
    is_splits: int = IS_SPLITS,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    pr_block_size: int | None = None,
    num_devices: int = -1,
    resize: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
  """Metrics between two paths (see `open_path`): the first is the samples, the second the reference.

  `metrics`: 'fid', 'sfid' (the ADM evaluator's spatial FID), 'is' (of the first path;
  torch-fidelity's), 'kid', 'pr' (the ADM evaluator's precision and recall).
  `suite='adm'`: the ADM evaluator's row: its Inception Score (`inception_score_adm`), FID,
  sFID, precision and recall, with preprocess 'tf1'; a reference batch's precomputed mu,
  sigma, mu_s and sigma_s are used for FID and sFID, as the evaluator does (L164-172).
  `preprocess`: 'pytorch_fid' (default), 'tf1' or 'clean' (see `preprocessing`).

  Returns the metrics asked for ('fid', 'sfid', 'inception_score' (adm) or
  'inception_score_mean'/'_std', 'kid_mean'/'_std', 'precision', 'recall'), 'preprocess',
  and 'num_images_1' (and '_2'; None for a statistics file that does not record it).
  """
  preprocess = _preprocessing(suite, preprocess, dims)
  metrics = ADM_METRICS if suite == 'adm' else metrics
  unknown = set(metrics) - set(METRICS)
  if unknown or not metrics:
    raise ValueError(f'unknown metrics {sorted(unknown)}; choose from {", ".join(METRICS)}.')
  _check_positive(
      batch_size=batch_size,
      is_splits=is_splits if 'is' in metrics and suite != 'adm' else None,
      kid_subsets=kid_subsets if 'kid' in metrics else None,
      pr_block_size=pr_block_size,
  )
  if len(paths) != 2 and not (len(paths) == 1 and set(metrics) == {'is'}):
    raise ValueError(f'give two paths (one is enough for --metrics=is alone), got {len(paths)}.')
  if dims not in FID_FEATURES:
    raise ValueError(f'--dims must be one of {sorted(FID_FEATURES)}, got {dims}.')
  sides = [open_path(p) for p in paths]  # every path checked before any work
  per_image = {'kid': 'KID', 'pr': 'precision and recall'}
  needs = []  # per side: what to compute from its images (None: a statistics file)
  for i, (path, side) in enumerate(zip(paths, sides)):
    given = side if isinstance(side, Statistics) else getattr(side, 'statistics', None)
    if given is not None and not isinstance(side, Statistics) and given.preprocess != preprocess:
      given = side.statistics = None  # a reference batch made another way: its images are there
    if given is not None:
      if given.dims != dims and not all(isinstance(s, Statistics) for s in sides):
        raise ValueError(f'{path} holds {given.dims}-d statistics, but --dims={dims}.')
      if given.preprocess not in (None, preprocess):
        raise ValueError(
            f'{path} holds statistics made with --preprocess={given.preprocess}, not {preprocess}; '
            'compute them again with the same preprocessing.'
        )
    wanted = [m for m in per_image if m in metrics] + (['is'] if 'is' in metrics and i == 0 else [])
    if given is not None and not wanted and ('sfid' not in metrics or given.mu_s is not None):
      side = sides[i] = dataclasses.replace(given, num_images=side.num_images)  # nothing to extract
    if isinstance(side, Statistics):
      if wanted:
        what = {'is': 'the Inception Score', **per_image}[wanted[0]]
        raise ValueError(f'{path} is a statistics file; {what} needs images.')
      if 'sfid' in metrics and side.mu_s is None:
        raise ValueError(
            f'{path} holds no spatial statistics (mu_s, sigma_s) for sFID, and no images (arr_0) to compute them '
            'from; give the images, or statistics written with --save_stats --suite=adm.'
        )
      needs.append(None)
      continue
    if side.num_images < 2:
      raise ValueError(f'{path}: FID statistics need at least 2 images, got {side.num_images}.')
    if 'kid' in metrics and not 2 <= kid_subset_size <= side.num_images:
      raise ValueError(
          f'{path}: the KID subset size {kid_subset_size} must lie in [2, its {side.num_images} images]; pass '
          '--kid_subset_size in that range.'
      )
    if 'pr' in metrics and side.num_images < manifold.K + 1:
      raise ValueError(
          f'{path}: precision and recall with k={manifold.K} need at least {manifold.K + 1} images in each set, '
          f'got {side.num_images}.'
      )
    sources.check_pixels(side, batch_size)
    needs.append(
        dict(
            spatial='sfid' in metrics and (given is None or given.mu_s is None),
            keep_features=any(m in metrics for m in per_image),
            keep_logits='is' in wanted,
        )
    )
  extractor = None
  if any(needs):
    extractor = Extractor(
        *load_fid_inception(weights),
        dims=dims,
        mesh=parallel.make_mesh(num_devices),
        resize=resize,
        logits='is' in metrics,
        spatial=any(need['spatial'] for need in needs if need),
        preprocess=preprocess,
    )
  stats = []
  for side, need in zip(sides, needs):
    if need is None:
      stats.append(side)
      continue
    computed = compute_statistics(
        side,
        extractor,
        batch_size=batch_size,
        keep_features=need['keep_features'],
        keep_logits=need['keep_logits'],
        progress=progress,
    )
    given = getattr(side, 'statistics', None)
    if given is not None:  # the evaluator's read_statistics: a reference batch's own mu and sigma win
      spatial = (given.mu_s, given.sigma_s) if given.mu_s is not None else (computed.mu_s, computed.sigma_s)
      computed = dataclasses.replace(computed, mu=given.mu, sigma=given.sigma, mu_s=spatial[0], sigma_s=spatial[1])
    stats.append(computed)
  result = {}
  if 'is' in metrics:
    if suite == 'adm':
      result['inception_score'] = inception_score_adm(stats[0].logits)
    else:
      result['inception_score_mean'], result['inception_score_std'] = inception_score(stats[0].logits, is_splits)
  if 'fid' in metrics:
    result['fid'] = fid(*stats)
  if 'sfid' in metrics:
    result['sfid'] = sfid(*stats)
  if 'kid' in metrics:
    result['kid_mean'], result['kid_std'] = kernel_inception_distance(
        stats[0].features, stats[1].features, subsets=kid_subsets, subset_size=kid_subset_size
    )
  if 'pr' in metrics:
    result['precision'], result['recall'] = manifold.precision_recall(
        stats[1].features, stats[0].features, block_size=pr_block_size, mesh=extractor.mesh
    )
  result['preprocess'] = preprocess
  for i, s in enumerate(stats):
    result[f'num_images_{i + 1}'] = s.num_images
  return result


def save_statistics(
    path: str,
    out: str,
    *,
    suite: str | None = None,
    preprocess: str | None = None,
    weights: str | None = None,
    batch_size: int = 50,
    dims: int = 2048,
    num_devices: int = -1,
    resize: bool = True,
    progress: bool = False,
) -> Statistics:
  """pytorch-fid's --save-stats: the statistics of the images at `path`, written to `out` (.npz),
  with the preprocessing's name. `suite='adm'`: a reference batch in the ADM evaluator's format
  instead: the images (arr_0, copied a batch at a time) with mu, sigma, mu_s and sigma_s (tf1)."""
  out = out if out.endswith('.npz') else out + '.npz'  # what np.savez writes
  preprocess = _preprocessing(suite, preprocess, dims)
  _check_positive(batch_size=batch_size)
  files.check_output(out, '--save_stats', inputs=[path])
  source = open_path(path)
  if isinstance(source, Statistics):
    raise ValueError(f'{path} already holds statistics.')
  if source.num_images < 2:
    raise ValueError(f'{path}: FID statistics need at least 2 images, got {source.num_images}.')
  sources.check_pixels(source, batch_size)
  extractor = Extractor(
      *load_fid_inception(weights),
      dims=dims,
      mesh=parallel.make_mesh(num_devices),
      resize=resize,
      spatial=suite == 'adm',
      preprocess=preprocess,
  )
  stats = compute_statistics(source, extractor, batch_size=batch_size, progress=progress)
  if jax.process_index() == 0:
    if suite == 'adm':  # read again from the start (a TFDS split is read once)
      sources.save_npz_images(out, open_path(path), stats.arrays())
    else:
      stats.save(out)
  return stats
