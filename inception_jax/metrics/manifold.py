"""Precision and recall (Kynkaanniemi et al. 2019) as the ADM evaluator computes them
(guided-diffusion `evaluations/evaluator.py`, vendored in scripts/tf_refs/adm_evaluator.py):
`ManifoldEstimator` (L205-359), `DistanceBlock` (L362-430), `Evaluator.compute_prec_recall`
(L194-202).

A point's radius is the squared distance to its k-th nearest neighbour in its own set, the point
itself counted as the 0th (L254, L270-276: np.partition(..., kth=k)[:, k]); precision is the
fraction of samples within (<=) the radius of some reference, recall the fraction of references
within the radius of some sample (L310, L390-391). Squared distances are
max(|u|^2 - 2 u.v + |v|^2, 0) in that order (L420-428), here in float32 with every product at
full precision (squared norms summed in float64, rounded once). The evaluator computes them in
float16 (L376-384; float32 only for a block that overflows float16), whose noise puts a few
points near a radius on the other side, mostly inside: 177 of 100,000 decisions on 50,000 x
50,000 Inception-like features (scripts/benchmark_precision_recall.py). Its float32 path
decides exactly as this one (tests/test_metrics_precision_recall.py).

The distances go block by block, never the whole N x N matrix: a row block is sharded over the
mesh's 'data' axis, a column block replicated, so each device holds one block of about
block_size x block_size distances. Radii keep a running list of the k + 1 smallest per row;
precision and recall OR the row and column decisions over the blocks. Every block has the
same shape (the last one padded), so each step compiles once per shape of set. The features
stay on the host, where every process holds all of them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from inception_jax import parallel

K = 3  # evaluator.py L217: nhood_sizes=(3,)
BLOCK_SIZE = 2048  # rows per device and columns per block: a 16 MiB float32 block (the evaluator: 10000 x 10000)
# XLA:CPU (JAX 0.10.2) computes an entry of a 512-d or 2048-d product to the same bits whatever
# the block's shape, given a multiple of 64 columns and at least 8 rows per device (measured;
# small products take another kernel): so radii and decisions do not depend on the block size
# or the device count.
_COLUMN_MULTIPLE, _ROW_MULTIPLE = 64, 8


def _distances(u, norm_u, v, norm_v):
  """evaluator.py L414-430 (`_batch_pairwise_distances`) in float32, the product at full
  precision. The squared norms come in: computed inside, XLA:CPU fuses their reductions into
  the matmul's kernel and runs at 60% of the matmul's speed."""
  uv = jax.lax.dot_general(u, v, (((1,), (1,)), ((), ())), precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(norm_u[:, None] - 2 * uv + norm_v[None, :], 0.0)


def _nearest_step(rows, row_norms, cols, col_norms, nearest):
  """Merges a column block into each row's k + 1 smallest distances, kept negated (top_k takes
  the largest)."""
  block, _ = jax.lax.top_k(-_distances(rows, row_norms, cols, col_norms), nearest.shape[1])
  merged, _ = jax.lax.top_k(jnp.concatenate([nearest, block], axis=1), nearest.shape[1])
  return merged


def _status_step(rows, row_norms, row_radii, cols, col_norms, col_radii, row_in):
  """evaluator.py L389-391 on one block: is a row inside some column's hypersphere, a column
  inside some row's."""
  d = _distances(rows, row_norms, cols, col_norms)
  return row_in | jnp.any(d <= col_radii[None, :], axis=1), jnp.any(d <= row_radii[:, None], axis=0)


@functools.cache
def _steps(mesh: Mesh):
  rows, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  nearest = jax.jit(_nearest_step, out_shardings=rows)
  status = jax.jit(_status_step, out_shardings=(rows, replicated))
  return nearest, status


def _blocks(num: int, size: int, multiple: int) -> tuple[int, int]:
  """(number of blocks, points per block) for `num` points in blocks of about `size`: as many
  blocks as `size` needs, evened out and rounded up to `multiple`, so padding stays small."""
  round_up = lambda n: -(-n // multiple) * multiple
  count = -(-num // round_up(size))
  return count, round_up(-(-num // count))


def _put(x: np.ndarray, start: int, size: int, sharding, fill: float = 0.0) -> jax.Array:
  """x[start:start + size] padded with `fill` to `size` rows, as a global array; every process
  holds the whole of x, so each device's part comes from it (works across processes)."""
  block = x[start : start + size]
  if len(block) < size:  # the last block
    block = np.concatenate([block, np.full((size - len(block), *x.shape[1:]), fill, x.dtype)])
  return jax.make_array_from_callback(block.shape, sharding, lambda index: block[index])


def _squared_norms(x: np.ndarray) -> np.ndarray:
  """|x|^2 per row, rounded once to float32 (the evaluator sums in float32: L420-421)."""
  return np.concatenate([np.square(x[i : i + 4096], dtype=np.float64).sum(1) for i in range(0, len(x), 4096)]).astype(
      np.float32
  )


class _Points:
  """Features and squared norms on the host, put on the mesh a block at a time. A padded point
  is zeros with squared norm +inf: infinitely far from everything, it is nobody's neighbour and
  inside no hypersphere, and its own radius and decision are dropped."""

  def __init__(self, features: np.ndarray):
    self.features, self.norms, self.size = features, _squared_norms(features), len(features)

  def put(self, start: int, size: int, sharding, *extra: np.ndarray) -> list[jax.Array]:
    arrays = [(self.features, 0), (self.norms, np.inf), *[(e, 0) for e in extra]]
    return [_put(x, start, size, sharding, fill) for x, fill in arrays]


def _check(features, k: int, what: str) -> np.ndarray:
  features = np.asarray(features)
  if features.ndim != 2:
    raise ValueError(f'precision/recall needs 2-D features [images, dims]; the {what} are {features.shape}.')
  if len(features) < k + 1:
    raise ValueError(f'precision/recall with k={k} needs at least {k + 1} images in each set, got {len(features)}.')
  features = np.asarray(features, np.float32)  # the evaluator feeds float32 placeholders (L374-375)
  if not np.isfinite(features).all():
    raise ValueError(f'the {what} contain NaN or infinity.')
  return features


def _check_pair(reference, samples, k: int) -> tuple[_Points, _Points]:
  reference, samples = _check(reference, k, 'reference features'), _check(samples, k, 'sample features')
  if reference.shape[1] != samples.shape[1]:
    raise ValueError(
        f'precision/recall needs features of one dimension, got {reference.shape[1]}-d reference and '
        f'{samples.shape[1]}-d sample features.'
    )
  return _Points(reference), _Points(samples)


def _layout(mesh: Mesh | None, block_size: int | None, num_rows: int, num_cols: int):
  """The mesh, (row blocks, rows per block) and (column blocks, columns per block)."""
  mesh = parallel.make_mesh() if mesh is None else mesh
  block_size = BLOCK_SIZE if block_size is None else block_size
  if block_size < 1:
    raise ValueError(f'block_size must be positive, got {block_size}.')
  devices = mesh.shape[parallel.DATA_AXIS]
  row_blocks, rows_each = _blocks(-(-num_rows // devices), block_size, _ROW_MULTIPLE)
  return mesh, (row_blocks, rows_each * devices), _blocks(num_cols, block_size, _COLUMN_MULTIPLE)


def manifold_radii(features, *, k: int = K, block_size: int | None = None, mesh: Mesh | None = None) -> np.ndarray:
  """`ManifoldEstimator.manifold_radii` (evaluator.py L248-281, no clamping): each point's squared
  distance to its k-th nearest neighbour, itself the 0th; float32 [N]. `block_size` (default
  BLOCK_SIZE): rows per device and columns per distance block; `mesh`: default every device."""
  return _radii(_Points(_check(features, k, 'features')), k, block_size, mesh)


def _radii(points: _Points, k: int, block_size: int | None, mesh: Mesh | None) -> np.ndarray:
  mesh, (row_blocks, rows), (col_blocks, cols) = _layout(mesh, block_size, points.size, points.size)
  nearest_step, _ = _steps(mesh)
  row_sharding, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  radii = np.empty(points.size, np.float32)
  for begin in range(0, row_blocks * rows, rows):
    block = points.put(begin, rows, row_sharding)
    nearest = _put(np.full((rows, k + 1), -np.inf, np.float32), 0, rows, row_sharding)
    for j in range(col_blocks):
      merged = nearest_step(*block, *points.put(j * cols, cols, replicated), nearest)
      # At most one step queued behind the running one: column blocks on device stay O(block).
      nearest.block_until_ready()
      nearest = merged
    # np.partition(..., kth=k)[:, k] (L270-276): the largest of the k + 1 smallest.
    radii[begin : begin + rows] = -multihost_utils.process_allgather(nearest, tiled=True)[: points.size - begin, k]
  return radii


def manifold_statuses(
    reference,
    reference_radii,
    samples,
    sample_radii,
    *,
    block_size: int | None = None,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """`ManifoldEstimator.evaluate_pr`'s decisions (evaluator.py L325-359, `features_1_status` and
  `features_2_status`): (reference point inside some sample's hypersphere [N_ref] bool, its mean
  the recall; sample point inside some reference's hypersphere [N_samples] bool, its mean the
  precision), given each set's `manifold_radii`."""
  reference, samples = _check_pair(reference, samples, 0)
  radii = [np.asarray(r, np.float32).reshape(-1) for r in (reference_radii, sample_radii)]
  if [len(r) for r in radii] != [reference.size, samples.size]:
    raise ValueError(
        f'{len(radii[0])} reference and {len(radii[1])} sample radii for {reference.size} and {samples.size} points.'
    )
  return _statuses(reference, radii[0], samples, radii[1], block_size, mesh)


def _statuses(reference: _Points, reference_radii, samples: _Points, sample_radii, block_size, mesh):
  # Reference rows by sample columns, as the evaluator's DistanceBlock(U=reference, V=samples) (L351-353).
  mesh, (row_blocks, rows), (col_blocks, cols) = _layout(mesh, block_size, reference.size, samples.size)
  _, status_step = _steps(mesh)
  row_sharding, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  reference_in, sample_in = np.empty(reference.size, bool), [None] * col_blocks
  for begin in range(0, row_blocks * rows, rows):
    block = reference.put(begin, rows, row_sharding, reference_radii)
    row_in = _put(np.zeros(rows, bool), 0, rows, row_sharding)
    for j in range(col_blocks):
      new_row_in, col_in = status_step(*block, *samples.put(j * cols, cols, replicated, sample_radii), row_in)
      sample_in[j] = col_in if sample_in[j] is None else sample_in[j] | col_in
      row_in.block_until_ready()  # at most one step queued (see _radii)
      row_in = new_row_in
    reference_in[begin : begin + rows] = multihost_utils.process_allgather(row_in, tiled=True)[: reference.size - begin]
  sample_in = np.concatenate([multihost_utils.process_allgather(s, tiled=True) for s in sample_in])
  return reference_in, sample_in[: samples.size]


def precision_recall(
    reference, samples, *, k: int = K, block_size: int | None = None, mesh: Mesh | None = None
) -> tuple[float, float]:
  """`Evaluator.compute_prec_recall(reference, samples)` (evaluator.py L194-202): (precision,
  recall) of the samples' features against the reference's, with k nearest neighbours."""
  reference, samples = _check_pair(reference, samples, k)
  radii = [_radii(points, k, block_size, mesh) for points in (reference, samples)]
  reference_in, sample_in = _statuses(reference, radii[0], samples, radii[1], block_size, mesh)
  # L356-358: means in float64.
  return float(np.mean(sample_in, dtype=np.float64)), float(np.mean(reference_in, dtype=np.float64))
