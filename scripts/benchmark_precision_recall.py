"""Times precision/recall (inception_jax.metrics.manifold, float32) on synthetic Inception-like
features, and the ADM evaluator's own float16 TensorFlow code on the same features; one JSON
line per run.

    python -m scripts.benchmark_precision_recall --num_reference=50000 --num_samples=50000

The evaluator (scripts/tf_refs/run_adm_evaluator.py, in a subprocess: it switches TensorFlow to
graph mode) runs on the first `evaluator_size` points of each set, a size stated in its line,
never extrapolated; ours runs at that size too, and the decisions float16 flips are counted.
Its `seconds` are its own precision/recall timing (the harness computes FID too, untimed here);
ours include compiling the two block programs (under a second).

Measured on the 2-core AMD EPYC (Zen 4) CPU, JAX 0.10.2, TensorFlow 2.21, 50,000 x 50,000 2048-d,
nothing else running: ours 183 s, peak RSS 1.3 GiB (0.76 GiB of it the features); the
evaluator's float16 code 214 s, 8.1 GiB (its process); 177 of the 100,000 decisions differ
(recall 122, precision 55; 140 of them inside only for float16), moving precision by 0.0007 and
recall by 0.0014.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from inception_jax import parallel
from inception_jax.metrics import manifold

ROOT = pathlib.Path(__file__).resolve().parents[1]
HARNESS = ROOT / 'scripts' / 'tf_refs' / 'run_adm_evaluator.py'


def realistic_features(num_reference: int, num_samples: int, dims: int = 2048, seed: int = 0):
  """(reference, samples) float32, like Inception pool3 features: non-negative, near a
  16-dimensional manifold (relu of a rank-16 Gaussian plus noise, |x|^2 about 0.4 dims).
  The samples spread less over the manifold (a generator that drops modes), so precision is
  high and recall low, neither 0 nor 1. Made in chunks of float32: no float64 copies."""
  rng = np.random.default_rng(seed)
  basis = (rng.normal(size=(16, dims)) / 4).astype(np.float32)

  def make(num, spread):
    out = np.empty((num, dims), np.float32)
    for begin in range(0, num, 4096):
      n = min(4096, num - begin)
      latent = rng.normal(0, spread, (n, 16)).astype(np.float32)
      noise = rng.standard_normal((n, dims), np.float32)
      out[begin : begin + n] = np.maximum(latent @ basis + 0.5 * noise - 0.3, 0)
    return out

  return make(num_reference, 1.0), make(num_samples, 0.8)


def _peak_rss_gib(who=resource.RUSAGE_SELF) -> float:
  return resource.getrusage(who).ru_maxrss / 2**20  # Linux: KiB


def _ours(reference, samples, block_size, mesh) -> dict:
  start = time.perf_counter()
  radii = [manifold.manifold_radii(x, block_size=block_size, mesh=mesh) for x in (reference, samples)]
  reference_in, sample_in = manifold.manifold_statuses(
      reference, radii[0], samples, radii[1], block_size=block_size, mesh=mesh
  )
  seconds = time.perf_counter() - start
  return dict(
      precision=float(sample_in.mean()),
      recall=float(reference_in.mean()),
      seconds=round(seconds, 2),
      radii=radii,
      status=(reference_in, sample_in),
  )


def _evaluator(reference, samples) -> dict:
  with tempfile.TemporaryDirectory() as folder:
    np.savez(f'{folder}/in.npz', ref_pool=reference, sample_pool=samples)
    run = subprocess.run(
        [sys.executable, '-m', 'scripts.tf_refs.run_adm_evaluator', f'{folder}/in.npz', f'{folder}/out.json'],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES=''),
    )
    if run.returncode:
      raise RuntimeError(f'the evaluator failed: {run.stderr[-2000:]}')
    with open(f'{folder}/out.json') as f:
      results = json.load(f)
    with np.load(f'{folder}/out.npz') as f:
      arrays = dict(f)
  return dict(
      precision=results['precision'],
      recall=results['recall'],
      seconds=round(results['seconds']['prec_recall'], 2),
      tensorflow=results['tensorflow'],
      row_batch_size=results['row_batch_size'],
      col_batch_size=results['col_batch_size'],
      radii=(arrays['ref_radii'][:, 0], arrays['sample_radii'][:, 0]),
      status=(arrays['ref_status'][:, 0], arrays['sample_status'][:, 0]),
  )


def benchmark(
    num_reference: int = 50000,
    num_samples: int = 50000,
    dims: int = 2048,
    evaluator_size: int | None = None,
    block_size: int | None = None,
    seed: int = 0,
) -> list[dict]:
  """Prints and returns the JSON lines: ours at full size; then, unless `evaluator_size` is 0 (or
  the harness is absent), the evaluator and ours on the first `evaluator_size` points of each set
  (None: all of them), with the decisions that differ. At 50,000 x 50,000 on a 2-core CPU each
  takes about 3-4 minutes (the module's docstring)."""
  reference, samples = realistic_features(num_reference, num_samples, dims, seed)
  mesh = parallel.make_mesh()
  common = dict(dims=dims, seed=seed, device_kind=jax.devices()[0].device_kind, devices=jax.device_count())
  block = dict(block_size=block_size or manifold.BLOCK_SIZE)
  lines = []

  def emit(line):
    lines.append(line)
    print(json.dumps(line), flush=True)

  rss_before = _peak_rss_gib()
  full = _ours(reference, samples, block_size, mesh)
  emit(
      dict(
          implementation='inception_jax float32',
          num_reference=num_reference,
          num_samples=num_samples,
          precision=full['precision'],
          recall=full['recall'],
          seconds=full['seconds'],
          peak_rss_gib=round(_peak_rss_gib(), 2),
          peak_rss_gib_before=round(rss_before, 2),  # features made; the run's own peak shows above it
          features_gib=round((reference.nbytes + samples.nbytes) / 2**30, 2),
          **common,
          **block,
      )
  )
  if evaluator_size == 0:
    return lines
  if not HARNESS.exists():
    emit(dict(implementation='ADM evaluator float16', skipped=f'{HARNESS} is absent'))
    return lines
  evaluator_size = max(num_reference, num_samples) if evaluator_size is None else evaluator_size
  n_ref, n_samples = min(evaluator_size, num_reference), min(evaluator_size, num_samples)
  reference, samples = reference[:n_ref], samples[:n_samples]
  theirs = _evaluator(reference, samples)
  emit(
      dict(
          implementation='ADM evaluator float16 (TensorFlow, scripts/tf_refs)',
          num_reference=n_ref,
          num_samples=n_samples,
          precision=theirs['precision'],
          recall=theirs['recall'],
          seconds=theirs['seconds'],
          peak_rss_gib=round(_peak_rss_gib(resource.RUSAGE_CHILDREN), 2),  # its whole process, FID included
          tensorflow=theirs['tensorflow'],
          **common,
          row_batch_size=theirs['row_batch_size'],
          col_batch_size=theirs['col_batch_size'],
      )
  )
  ours = full if (n_ref, n_samples) == (num_reference, num_samples) else _ours(reference, samples, block_size, mesh)
  relative = [np.abs(a - b) / a for a, b in zip(ours['radii'], theirs['radii'])]
  emit(
      dict(
          implementation='inception_jax float32',
          num_reference=n_ref,
          num_samples=n_samples,
          precision=ours['precision'],
          recall=ours['recall'],
          seconds=ours['seconds'],
          flipped_recall_decisions=int((ours['status'][0] != theirs['status'][0]).sum()),
          flipped_precision_decisions=int((ours['status'][1] != theirs['status'][1]).sum()),
          # float16 noise on every distance lowers the minimum over hyperspheres: mostly "inside" there.
          flipped_inside_only_for_evaluator=int(sum((t & ~o).sum() for o, t in zip(ours['status'], theirs['status']))),
          radii_max_relative_difference=float(max(r.max() for r in relative)),
          radii_median_relative_difference=float(np.median(np.concatenate(relative))),
          **common,
          **block,
      )
  )
  return lines


def parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--num_reference', type=int, default=50000)
  parser.add_argument('--num_samples', type=int, default=50000)
  parser.add_argument('--dims', type=int, default=2048)
  parser.add_argument(
      '--evaluator_size', type=int, default=None, help='points per set for the evaluator (default: all); 0: skip it'
  )
  parser.add_argument('--block_size', type=int, default=None, help=f'default {manifold.BLOCK_SIZE}')
  parser.add_argument('--seed', type=int, default=0)
  return parser


def main(argv=None):
  args = parser().parse_args(argv)
  benchmark(args.num_reference, args.num_samples, args.dims, args.evaluator_size, args.block_size, args.seed)


if __name__ == '__main__':
  main()
