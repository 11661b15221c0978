"""What scripts.fid runs: metrics between paths, and statistics files."""

from __future__ import annotations

import os
from typing import Any

import jax

from inception_jax import npz, parallel
from inception_jax.metrics import sources
from inception_jax.metrics.distances import IS_SPLITS, KID_SUBSET_SIZE, KID_SUBSETS
from inception_jax.metrics.distances import fid, inception_score, kernel_inception_distance
from inception_jax.metrics.features import Extractor, Statistics, compute_statistics
from inception_jax.metrics.sources import FolderImages, ImageSource, NpzImages, TfdsImages
from inception_jax.metrics.weights import load_fid_inception
from inception_jax.models.inception_v3 import FID_FEATURES

METRICS = ('fid', 'is', 'kid')


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
  sources.check_pixels(source)
  return source


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
      sources.check_pixels(side, batch_size)
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
  sources.check_pixels(source, batch_size)
  model, variables = load_fid_inception(weights)
  extractor = Extractor(model, variables, dims=dims, mesh=parallel.make_mesh(num_devices), resize=resize)
  stats = compute_statistics(source, extractor, batch_size=batch_size, progress=progress)
  if jax.process_index() == 0:
    stats.save(out)
  return stats
