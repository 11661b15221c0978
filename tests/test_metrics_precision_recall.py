"""Precision and recall (inception_jax.metrics.manifold) against the ADM evaluator's own code
(scripts/tf_refs: guided-diffusion `evaluations/evaluator.py`, run under tensorflow.compat.v1 in
a subprocess) on the same features, in its float32 path and its float16 one; the same bits for
any block size, device count or number of processes; a case worked by hand; full-precision products;
one-line errors."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import processes
import pytest

from inception_jax import parallel
from inception_jax.metrics import manifold
from scripts.benchmark_precision_recall import realistic_features

ROOT = pathlib.Path(__file__).resolve().parents[1]


def squared_distances(a, b):
  a, b = a.astype(np.float64), b.astype(np.float64)
  return (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]


@pytest.fixture(scope='module')
def evaluated(tmp_path_factory):
  """Inception-like 512-d features (2000 reference, 1500 samples) and the evaluator's radii and
  decisions on them: as they are (its float16 DistanceBlock, evaluator.py L376-379) and times 64.
  Times 64, every squared norm passes float16's 65504 and each block takes the evaluator's own
  float32 fallback (L380-384); a power of two scales every float32 operation exactly, so that
  run is the float32 path on the original features, its distances times 4096."""
  folder = tmp_path_factory.mktemp('evaluator')
  reference, samples = realistic_features(2000, 1500, dims=512, seed=1)
  assert min(np.square(64 * x).sum(1).min() for x in (reference, samples)) > 65504
  for name, scale in (('float16', 1), ('float32', 64)):
    np.savez(folder / f'{name}.npz', ref_pool=scale * reference, sample_pool=scale * samples)
  script = (
      'from scripts.tf_refs import run_adm_evaluator as harness\n'
      f'for name in ("float16", "float32"): harness.main([f"{folder}/{{name}}.npz", f"{folder}/{{name}}.out.json"])'
  )
  run = subprocess.run(
      [sys.executable, '-c', script],
      capture_output=True,
      text=True,
      cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES=''),
  )
  assert run.returncode == 0, run.stderr[-3000:]
  theirs = {}
  for name, scale in (('float16', 1), ('float32', 64)):
    with np.load(folder / f'{name}.out.npz') as f:
      theirs[name] = {key: f[key][:, 0] / (scale**2 if 'radii' in key else 1) for key in f.files}
  return reference, samples, theirs


def test_radii_and_decisions_equal_the_evaluators_float32_path(evaluated):
  reference, samples, theirs = evaluated
  theirs = theirs['float32']
  radii = [manifold.manifold_radii(x, block_size=512) for x in (reference, samples)]
  # The ones the fallback made: float32 values, not float16's 11 significant bits.
  assert np.mean(theirs['ref_radii'].astype(np.float16) != theirs['ref_radii']) > 0.9
  # Its matmul (oneDNN) adds in another order than XLA's: radii agree to float32 round-off.
  np.testing.assert_allclose(radii[0], theirs['ref_radii'], rtol=1e-5)
  np.testing.assert_allclose(radii[1], theirs['sample_radii'], rtol=1e-5)
  reference_in, sample_in = manifold.manifold_statuses(reference, radii[0], samples, radii[1], block_size=512)
  np.testing.assert_array_equal(reference_in, theirs['ref_status'])
  np.testing.assert_array_equal(sample_in, theirs['sample_status'])
  precision, recall = manifold.precision_recall(reference, samples, block_size=512)
  assert (precision, recall) == (theirs['sample_status'].mean(), theirs['ref_status'].mean())
  assert 0.5 < precision < 1 and 0.1 < recall < 0.5  # neither trivially 0 nor 1
  # Scaling is exact for us too: the x64 run is the same computation.
  np.testing.assert_array_equal(manifold.manifold_radii(64 * samples, block_size=512), 4096 * radii[1])


def test_the_evaluators_float16_flips_only_decisions_within_its_round_off_of_a_radius(evaluated):
  """float16 keeps 11 significant bits (relative spacing 2^-10); a distance is a difference of
  squared norms a few times larger than itself, and the radius it is compared with carries the
  same error, so float16 can decide differently only where a distance lies within about 1% of
  the radius. Measured on these 3500 decisions: 3 flips, all within 0.1%."""
  reference, samples, theirs = evaluated
  theirs = theirs['float16']
  assert np.all(theirs['ref_radii'].astype(np.float16) == theirs['ref_radii'])  # float16 values: that path ran
  radii = [manifold.manifold_radii(x) for x in (reference, samples)]
  reference_in, sample_in = manifold.manifold_statuses(reference, radii[0], samples, radii[1])
  # Exact margins: by how much (relative) the nearest hypersphere misses or holds each point.
  exact_radii = [np.partition(squared_distances(x, x), manifold.K, axis=1)[:, manifold.K] for x in (reference, samples)]
  d = squared_distances(reference, samples)
  recall_margin = (d / exact_radii[1][None, :]).min(axis=1) - 1
  precision_margin = (d / exact_radii[0][:, None]).min(axis=0) - 1
  # float32 decides as exact arithmetic does on these sets.
  np.testing.assert_array_equal(reference_in, recall_margin <= 0)
  np.testing.assert_array_equal(sample_in, precision_margin <= 0)
  flips = [reference_in != theirs['ref_status'], sample_in != theirs['sample_status']]
  assert flips[0].sum() + flips[1].sum() <= 10  # 3 here (TensorFlow 2.21 on CPU: Eigen float16)
  assert np.abs(recall_margin[flips[0]]).max(initial=0) < 0.01
  assert np.abs(precision_margin[flips[1]]).max(initial=0) < 0.01
  np.testing.assert_allclose(radii[0], theirs['ref_radii'], rtol=0.01)


def run_independence(out: str) -> None:
  """Radii and decisions for a mesh of 1 and of 8 devices and two block sizes, into `out`."""
  assert jax.device_count() == 8
  reference, samples = realistic_features(1100, 900, dims=512, seed=2)
  results = {}
  for devices in (1, 8):
    mesh = parallel.make_mesh(devices)
    manifold.manifold_radii(reference, block_size=64, mesh=mesh)
    # Every block has one shape (the last one padded): one program, whatever the number of blocks.
    assert manifold._steps(mesh)[0]._cache_size() == 1
    for block_size in (64, 1000):
      radii = [manifold.manifold_radii(x, block_size=block_size, mesh=mesh) for x in (reference, samples)]
      statuses = manifold.manifold_statuses(reference, radii[0], samples, radii[1], block_size=block_size, mesh=mesh)
      name = f'{devices} devices, block {block_size}'
      results.update({f'{name}: {i}': a for i, a in enumerate([*radii, *statuses])})
  np.savez(out, **results)


def test_block_size_and_device_count_change_no_bit(tmp_path):
  script = (
      f'import sys; sys.path.insert(0, {str(ROOT / "tests")!r}); import test_metrics_precision_recall as t; '
      f't.run_independence({str(tmp_path / "out.npz")!r})'
  )
  env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS='--xla_force_host_platform_device_count=8')
  run = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env, cwd=ROOT)
  assert run.returncode == 0, run.stderr[-3000:]
  with np.load(tmp_path / 'out.npz') as f:
    results = dict(f)
  names = sorted({key.split(':')[0] for key in results})
  assert len(names) == 4
  reference, samples = realistic_features(1100, 900, dims=512, seed=2)
  radii = [np.partition(squared_distances(x, x), manifold.K, axis=1)[:, manifold.K] for x in (reference, samples)]
  for name in names:
    np.testing.assert_allclose(results[f'{name}: 0'], radii[0], rtol=1e-5)  # the right radii ...
    for i in range(4):  # ... and the same bits everywhere
      np.testing.assert_array_equal(results[f'{name}: {i}'], results[f'{names[0]}: {i}'], err_msg=f'{name}: {i}')
  assert 0 < results[f'{names[0]}: 2'].mean() < 1 and 0 < results[f'{names[0]}: 3'].mean() < 1


def distributed_worker(coordinator: str, process_id: int, out: str) -> None:
  jax.distributed.initialize(coordinator, 2, process_id)
  assert (jax.process_count(), jax.device_count()) == (2, 4)
  reference, samples = realistic_features(700, 500, dims=512, seed=3)
  radii = [manifold.manifold_radii(x, block_size=64) for x in (reference, samples)]
  statuses = manifold.manifold_statuses(reference, radii[0], samples, radii[1], block_size=64)
  np.savez(out.format(process_id), *radii, *statuses)
  jax.distributed.shutdown()


def test_two_processes_give_every_process_the_same_bits_as_one(tmp_path):
  out = str(tmp_path / 'process{}.npz')
  processes.run_two('test_metrics_precision_recall', 'distributed_worker', out)
  reference, samples = realistic_features(700, 500, dims=512, seed=3)
  radii = [manifold.manifold_radii(x, block_size=64) for x in (reference, samples)]
  expected = [*radii, *manifold.manifold_statuses(reference, radii[0], samples, radii[1], block_size=64)]
  for i in range(2):
    with np.load(out.format(i)) as f:
      for j, array in enumerate(expected):
        np.testing.assert_array_equal(f[f'arr_{j}'], array, err_msg=f'process {i}, array {j}')


def test_points_on_a_line():
  """Reference 0, 1, 2, 3, 4 and samples 6, 7, 8, 9, 10, 30 on a line (squared distances are
  exact small integers). Radius: 4th smallest squared distance counting the point itself
  (evaluator.py L254, L270-276); inside: distance <= radius (L310, L390-391)."""
  line = lambda *x: np.stack([np.array(x, np.float32), np.zeros(len(x), np.float32)], axis=1)
  reference, samples = line(0, 1, 2, 3, 4), line(6, 7, 8, 9, 10, 30)
  # 0: {0, 1, 4, 9, 16} -> 9; 2: {0, 1, 1, 4, 4} -> 4; 30: {0, 400, 441, 484, 529} -> 484.
  np.testing.assert_array_equal(manifold.manifold_radii(reference), [9, 4, 4, 4, 9])
  np.testing.assert_array_equal(manifold.manifold_radii(samples), [9, 4, 4, 4, 9, 484])
  np.testing.assert_array_equal(manifold.manifold_radii(line(0, 0, 0, 0, 5)), [0, 0, 0, 0, 25])  # duplicates count
  reference_in, sample_in = manifold.manifold_statuses(reference, [9, 4, 4, 4, 9], samples, [9, 4, 4, 4, 9, 484])
  # Sample 6 is 4 from reference 4 (radius 9), sample 7 exactly 9 from it; 8 is 16 from 4 and 25 from 3 (radius 4).
  np.testing.assert_array_equal(sample_in, [True, True, False, False, False, False])
  # Reference 4 is 4 from sample 6 (radius 9), reference 3 exactly 9 from it; 30's radius 484 < 26^2.
  np.testing.assert_array_equal(reference_in, [False, False, False, True, True])
  # Padding is zeros, at the origin: a sample there must stay outside the padded rows (and far from 10-14).
  assert manifold.precision_recall(line(10, 11, 12, 13, 14), line(0, 1, 2, 3)) == (0, 0)
  for block_size in (1, 4, None):
    assert manifold.precision_recall(reference, samples, block_size=block_size) == (2 / 6, 2 / 5)
  # k=2, radii 3rd smallest: reference [4, 1, 1, 1, 4], samples [4, 1, 1, 1, 4, 441]: only 6 and 4 touch (d = 4).
  assert manifold.precision_recall(reference, samples, k=2) == (1 / 6, 1 / 5)


def test_every_product_runs_at_full_float32_precision():
  """On GPU and TPU a float32 dot without a precision runs with TF32 or bfloat16 passes."""
  mesh = parallel.make_mesh()
  nearest, status = manifold._steps(mesh)
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, np.float32)
  texts = [
      nearest.lower(f32(16, 8), f32(16), f32(64, 8), f32(64), f32(16, 4)).as_text(),
      status.lower(
          f32(16, 8), f32(16), f32(16), f32(64, 8), f32(64), f32(64), jax.ShapeDtypeStruct((16,), bool)
      ).as_text(),
  ]
  for text in texts:
    dots = [line for line in text.splitlines() if 'stablehlo.dot_general' in line]
    assert len(dots) == 1 and 'precision = [HIGHEST, HIGHEST]' in dots[0], dots


def one_line_error(call, pattern):
  with pytest.raises(ValueError, match=pattern) as info:
    call()
  assert '\n' not in str(info.value)


def test_bad_inputs_are_one_line():
  good = np.random.default_rng(0).random((5, 3), np.float32)
  one_line_error(
      lambda: manifold.precision_recall(good, good[:3]),
      r'^precision/recall with k=3 needs at least 4 images in each set, got 3\.$',
  )
  one_line_error(lambda: manifold.manifold_radii(good[:1], k=1), r'with k=1 needs at least 2 images.*got 1')
  one_line_error(lambda: manifold.precision_recall(good, good[:, :2]), r'one dimension, got 3-d reference and 2-d')
  one_line_error(lambda: manifold.precision_recall(good[0], good), r'2-D features .* are \(3,\)')
  one_line_error(lambda: manifold.manifold_radii(good[None]), r'2-D features .* are \(1, 5, 3\)')
  for bad in (np.nan, np.inf):
    broken = good.copy()
    broken[2, 1] = bad
    one_line_error(lambda: manifold.precision_recall(good, broken), r'sample features contain NaN or infinity')
  one_line_error(lambda: manifold.manifold_radii(good, block_size=0), r'block_size must be positive, got 0')


def test_the_benchmark_runs_ours_and_the_evaluator_on_the_same_features(capsys):
  """docs/metrics.md's benchmark command, at a small size: three JSON lines, the evaluator's at the same size."""
  from scripts import benchmark_precision_recall  # pylint: disable=g-import-not-at-top

  benchmark_precision_recall.main(['--num_reference=300', '--num_samples=200', '--dims=64', '--block_size=128'])
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [line['implementation'].split(' (')[0] for line in lines] == [
      'inception_jax float32',
      'ADM evaluator float16',
      'inception_jax float32',
  ]
  assert all((line['num_reference'], line['num_samples']) == (300, 200) for line in lines)
  assert 0 < lines[0]['precision'] < 1 and lines[0]['peak_rss_gib'] > 0 and lines[2]['flipped_recall_decisions'] >= 0
