"""FID, Inception Score and KID (inception_jax.metrics, scripts.fid): parity with pytorch-fid 0.3.0
end to end (scripts/torch_refs/pytorch_fid_metrics.py: pytorch-fid needs torchvision, which does not
install beside this torch, so its fid_score.py is re-typed line by line), torch-fidelity 0.3.0's
formulas restated, the same FID for any batch size, device count, statistics round trip or
number of processes, and one-line errors."""

import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
import torch
import conftest
import processes
from PIL import Image
from scripts.torch_refs import pytorch_fid_inception as fid_ref
from scripts.torch_refs import pytorch_fid_metrics as fid_score

from inception_jax import metrics, parallel
from scripts import fid as fid_script

ROOT = pathlib.Path(__file__).resolve().parents[1]

run_cli = conftest.script_runner(fid_script)


def write_pngs(folder, images):
  folder.mkdir(parents=True, exist_ok=True)
  for i, image in enumerate(images):
    Image.fromarray(image).save(folder / f'{i:03d}.png')
  return folder


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  """Two folders of 6 PNG images of 40x48, from different distributions."""
  root, rng = tmp_path_factory.mktemp('images'), np.random.default_rng(0)
  a = rng.integers(0, 256, (6, 40, 48, 3), np.uint8)
  b = np.clip(rng.normal(150, 40, (6, 40, 48, 3)), 0, 255).astype(np.uint8)
  return types.SimpleNamespace(a=str(write_pngs(root / 'a', a)), b=str(write_pngs(root / 'b', b)), a_images=a)


SMALL = dict(is_splits=3, kid_subsets=5, kid_subset_size=5)  # IS and KID defaults need 10 and 1000 images


# torch-fidelity 0.3.0, restated: metric_isc.py lines 11-34; metric_kid.py lines 16-62 (mmd2, unbiased;
# polynomial_kernel) and 72-117 (kid_features_to_metric).


def torch_fidelity_isc(feature, splits=10, shuffle=True, rng_seed=2020):
  feature = torch.as_tensor(feature)
  N = feature.shape[0]
  if shuffle:
    rng = np.random.RandomState(rng_seed)
    feature = feature[rng.permutation(N), :]
  feature = feature.double()
  p = feature.softmax(dim=1)
  log_p = feature.log_softmax(dim=1)
  scores = []
  for i in range(splits):
    p_chunk = p[(i * N // splits) : ((i + 1) * N // splits), :]
    log_p_chunk = log_p[(i * N // splits) : ((i + 1) * N // splits), :]
    q_chunk = p_chunk.mean(dim=0, keepdim=True)
    kl = p_chunk * (log_p_chunk - q_chunk.log())
    scores.append(kl.sum(dim=1).mean().exp().item())
  return float(np.mean(scores)), float(np.std(scores))


def torch_fidelity_kid(
    features_1, features_2, kid_subsets=100, kid_subset_size=1000, degree=3, gamma=None, coef0=1, rng_seed=2020
):
  def polynomial_kernel(X, Y):
    g = 1.0 / X.shape[1] if gamma is None else gamma
    return (np.matmul(X, Y.T) * g + coef0) ** degree

  def mmd2(K_XX, K_XY, K_YY):  # mmd_est='unbiased'
    m = K_XX.shape[0]
    diag_X, diag_Y = np.diagonal(K_XX), np.diagonal(K_YY)
    Kt_XX_sum = (K_XX.sum(axis=1) - diag_X).sum()
    Kt_YY_sum = (K_YY.sum(axis=1) - diag_Y).sum()
    K_XY_sum = K_XY.sum(axis=0).sum()
    return (Kt_XX_sum + Kt_YY_sum) / (m * (m - 1)) - 2 * K_XY_sum / (m * m)

  n_samples_1, n_samples_2 = len(features_1), len(features_2)
  mmds = np.zeros(kid_subsets)
  rng = np.random.RandomState(rng_seed)
  for i in range(kid_subsets):
    f1 = features_1[rng.choice(n_samples_1, kid_subset_size, replace=False)]
    f2 = features_2[rng.choice(n_samples_2, kid_subset_size, replace=False)]
    mmds[i] = mmd2(polynomial_kernel(f1, f1), polynomial_kernel(f1, f2), polynomial_kernel(f2, f2))
  return float(np.mean(mmds)), float(np.std(mmds))


def test_fid_matches_pytorch_fid_end_to_end(network, folders):
  # What scripts.fid computes, from pytorch-fid's kind of weight file.
  ours = metrics.calculate_metrics(
      [folders.a, folders.b], metrics=('fid', 'is', 'kid'), weights=network.pth, batch_size=8, **SMALL
  )
  extractor = fid_ref.InceptionV3(network.torch, output_blocks=(3,)).eval()  # pytorch-fid's, its weights replaced
  activations = [
      fid_score.get_activations(fid_score.image_files(p), extractor, 50, 2048, 'cpu', 0) for p in (folders.a, folders.b)
  ]
  stats = lambda a: (np.mean(a, axis=0), np.cov(a, rowvar=False))  # pytorch-fid, l. 229-230
  # pytorch-fid's distance (scipy's sqrtm) and the eigh route agree on the same rank-5 statistics,
  # here of the first 768 features: scipy's sqrtm of a 2048-d product takes 13 s on 2 cores.
  part = [stats(a[:, :768]) for a in activations]
  assert metrics.frechet_distance(*part[0], *part[1]) == pytest.approx(
      fid_score.calculate_frechet_distance(*part[0], *part[1]), rel=1e-6
  )
  # PNG folders of 40x48 images through both whole pipelines, 2048-d.
  assert ours['fid'] == pytest.approx(
      metrics.frechet_distance(*stats(activations[0]), *stats(activations[1])), rel=1e-4
  )
  assert (ours['num_images_1'], ours['num_images_2']) == (6, 6)
  # IS and KID on torch's features, as torch-fidelity computes them (its logits_unbiased: no fc bias).
  logits = activations[0] @ network.torch.fc.weight.detach().numpy().T.astype(np.float64)
  is_mean, is_std = torch_fidelity_isc(logits, splits=3)
  assert ours['inception_score_mean'] - 1 == pytest.approx(is_mean - 1, rel=1e-3)  # IS is near 1 here
  assert ours['inception_score_std'] == pytest.approx(is_std, rel=1e-2, abs=1e-7)
  kid = torch_fidelity_kid(*activations, kid_subsets=5, kid_subset_size=5)
  assert [ours['kid_mean'], ours['kid_std']] == pytest.approx(kid, rel=1e-4)


def test_frechet_distance_of_commuting_covariances_is_exact_without_nan():
  # Shared eigenvectors: tr sqrt(S1 S2) = sum sqrt(a b). Some eigenvalues are 0 (rank-deficient,
  # as with fewer images than dimensions): no NaN, no complex values.
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(256, 256)))
  a, b = rng.uniform(0, 2, 256), rng.uniform(0, 2, 256)
  a[:40], b[20:50] = 0, 0
  mu1, mu2 = rng.normal(size=256), rng.normal(size=256)
  exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  value = metrics.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
  # sqrt of round-off (1e-16 -> 1e-8) where one eigenvalue is 0 and the other not: 1e-9 relative.
  assert isinstance(value, float) and value == pytest.approx(exact, rel=1e-8)
  # A set against itself: 0 up to the same round-off (tr S1 = 216 here).
  assert abs(metrics.frechet_distance(mu1, (q * a) @ q.T, mu1, (q * a) @ q.T)) < 1e-8 * np.sum(a)


def test_frechet_distance_rejects_mismatched_or_broken_statistics():
  with pytest.raises(ValueError, match='different dimensions: 3-d .* and 4-d'):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match='NaN'):
    metrics.frechet_distance(np.zeros(3), np.full((3, 3), np.nan), np.zeros(3), np.eye(3))


class PixelFeatures:
  """An Extractor stand-in for tests of the bookkeeping: an image's features and logits are its
  first `dims` pixel values."""

  def __init__(self, mesh, dims=12):
    self.mesh, self.dims, self.logits, self.spatial, self.preprocess = mesh, dims, True, False, 'pytorch_fid'
    rows = lambda x: x.reshape(x.shape[0], -1)[:, :dims].astype(np.float32)
    step = lambda x, n: {'features': rows(x), 'logits': 2 * rows(x), 'valid': np.arange(x.shape[0]) < n}
    self._step = jax.jit(step, out_shardings=parallel.batch_sharding(mesh))

  def __call__(self, images, num_valid):
    return self._step(images, num_valid)


def test_accumulator_gives_numpys_mean_and_covariance_for_any_batches():
  images = (np.random.default_rng(0).normal(size=(23, 2, 3, 2)) + 5).astype(np.float32)  # an offset float32 sums feel
  features = images.reshape(23, -1).astype(np.float64)
  expected = features.mean(axis=0), np.cov(features, rowvar=False)
  extract = PixelFeatures(parallel.make_mesh(1))
  for batches in ([23], [1] * 23, [7, 7, 7, 2], [16, 7]):
    accumulator = metrics.Accumulator(extract, keep_features=True, keep_logits=True)
    start = 0
    for size in batches:
      padded = np.concatenate([images[start : start + size], np.zeros((3, 2, 3, 2))])  # padding masked out
      accumulator.update(padded, num_valid=size)
      start += size
    stats = accumulator.result()
    np.testing.assert_allclose(stats.mu, expected[0], rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, expected[1], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(stats.features, images.reshape(23, -1))  # in the images' order
    np.testing.assert_array_equal(stats.logits, 2 * images.reshape(23, -1))
    assert stats.num_images == 23
  one = metrics.Accumulator(extract)
  one.update(images[:1])
  with pytest.raises(ValueError, match='at least 2 images, got 1'):
    one.result()


def test_inception_score_is_torch_fidelitys():
  logits = np.random.default_rng(0).normal(0, 3, (53, 1008)).astype(np.float32)
  for splits, shuffle in ((10, True), (4, False), (1, True)):
    expected = torch_fidelity_isc(logits, splits, shuffle)
    assert metrics.inception_score(logits, splits, shuffle) == pytest.approx(expected, rel=1e-12)
  assert metrics.inception_score(logits)[0] != pytest.approx(metrics.inception_score(logits, shuffle=False)[0])
  with pytest.raises(ValueError, match='10 splits needs at least 10 images, got 9'):
    metrics.inception_score(logits[:9])


def test_kid_is_torch_fidelitys():
  rng = np.random.default_rng(0)
  f1 = np.abs(rng.normal(0, 1, (40, 16))).astype(np.float32)
  f2 = np.abs(rng.normal(0.2, 1, (50, 16))).astype(np.float32)
  kid = metrics.kernel_inception_distance(f1, f2, subsets=7, subset_size=20)
  # torch-fidelity runs in the features' float32; in float64 the same code gives ours to rounding.
  assert kid == pytest.approx(torch_fidelity_kid(f1.astype(np.float64), f2.astype(np.float64), 7, 20), rel=1e-10)
  assert kid == pytest.approx(torch_fidelity_kid(f1, f2, 7, 20), rel=1e-4)
  assert metrics.kernel_inception_distance(
      f1, f2, subsets=3, subset_size=10, degree=2, gamma=0.5, coef0=0
  ) == pytest.approx(torch_fidelity_kid(f1.astype(np.float64), f2.astype(np.float64), 3, 10, 2, 0.5, 0), rel=1e-10)
  with pytest.raises(ValueError, match=r'subset size 41 .*\(first set: 40'):
    metrics.kernel_inception_distance(f1, f2, subset_size=41)


def approx_row(row: dict, rel: float) -> dict:
  """`row` with its numbers compared to `rel` and its strings exactly (pytest.approx takes numbers only)."""
  return {k: v if isinstance(v, str) else pytest.approx(v, rel=rel) for k, v in row.items()}


def test_cli_json_save_stats_and_every_kind_of_path(network, folders, tmp_path, capsys):
  # At --dims=64 (the stem only): the last line of stdout is the JSON; the converted folder gives
  # what the .pth file gives; statistics files round trip; an .npz of images reads like the folder.
  # (IS and KID at 2048 through the same calculate_metrics: the parity test.)
  def run(*paths, weights=network.pth, metrics_flag='--metrics=fid,kid'):
    assert (
        run_cli(
            *paths,
            '--dims=64',
            '--batch_size=8',
            f'--weights={weights}',
            metrics_flag,
            '--kid_subsets=5',
            '--kid_subset_size=5',
            '--json',
        )
        == 0
    )
    return json.loads(capsys.readouterr().out.splitlines()[-1])

  direct = run(folders.a, folders.b)
  assert (
      set(direct) == {'fid', 'kid_mean', 'kid_std', 'preprocess', 'num_images_1', 'num_images_2'} and direct['fid'] > 0
  )
  assert (direct['num_images_1'], direct['num_images_2']) == (6, 6)
  assert run(folders.a, folders.b, weights=network.converted) == approx_row(direct, rel=1e-9)
  assert run_cli('--save_stats', folders.a, tmp_path / 'a.npz', '--dims=64', f'--weights={network.pth}') == 0
  assert 'statistics of 6 images, 64-d' in capsys.readouterr().out
  with np.load(tmp_path / 'a.npz', allow_pickle=False) as f:  # pytorch-fid's layout
    assert f['mu'].shape == (64,) and f['sigma'].shape == (64, 64) and f['sigma'].dtype == np.float64
  from_file = run(tmp_path / 'a.npz', folders.b, metrics_flag='--metrics=fid')
  assert from_file['fid'] == pytest.approx(direct['fid'], rel=1e-12)
  np.savez(tmp_path / 'a_images.npz', folders.a_images)  # arr_0, NHWC uint8
  assert run(tmp_path / 'a_images.npz', folders.b) == approx_row(direct, rel=1e-12)
  assert run_cli('--save_stats', folders.a, tmp_path / 'a.npz', f'--weights={network.pth}') == 1
  assert 'a.npz exists' in capsys.readouterr().err


def test_npz_images_stream_in_ranges_and_tfds_splits_read_in_order(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (9, 5, 4, 1), np.uint8)
  np.savez_compressed(tmp_path / 'grey.npz', images)
  source = metrics.open_path(str(tmp_path / 'grey.npz'))
  assert (source.num_images, source.image_shape) == (9, (5, 4, 3))
  np.testing.assert_array_equal(source.read(2, 4), np.repeat(images[2:4], 3, axis=-1))
  np.testing.assert_array_equal(source.read(7, 9)[..., 0], images[7:9, ..., 0])  # skips ahead
  np.testing.assert_array_equal(source.read(0, 1)[..., 2], images[:1, ..., 0])  # starts again

  import tensorflow_datasets as tfds

  mnist = metrics.open_path('tfds:mnist:test[:5]')
  dataset = tfds.load('mnist', split='test[:5]', shuffle_files=False)
  expected = np.stack([example['image'] for example in dataset.as_numpy_iterator()])
  assert (mnist.num_images, mnist.image_shape) == (5, (28, 28, 3))
  np.testing.assert_array_equal(mnist.read(0, 2), np.repeat(expected[:2], 3, axis=-1))
  np.testing.assert_array_equal(mnist.read(3, 5)[..., 1], expected[3:5, ..., 0])


def bad_inputs(root):
  (root / 'empty').mkdir()
  (root / 'empty' / 'notes.txt').write_text('no images here')
  write_pngs(root / 'unreadable', np.zeros((2, 8, 8, 3), np.uint8))
  (root / 'unreadable' / '001.png').write_bytes(b'not a png')
  write_pngs(root / 'sizes', [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)])
  write_pngs(root / 'one', np.zeros((1, 8, 8, 3), np.uint8))
  np.savez(root / 'stats3.npz', mu=np.zeros(3), sigma=np.eye(3))
  np.savez(root / 'stats4.npz', mu=np.zeros(4), sigma=np.eye(4))
  return root


@pytest.mark.parametrize(
    'paths, message',
    [
        (['unreadable', 'stats3.npz'], r'^cannot read image .*unreadable/001\.png: UnidentifiedImageError'),
        (['empty', 'stats3.npz'], r'^\S*empty holds no images \(pytorch-fid reads \*\.bmp, .*\*\.png'),
        (['sizes', 'stats3.npz'], r'^images of different sizes in \S*sizes: 000\.png is 8x8, 001\.png is 10x8'),
        (['stats3.npz', 'stats4.npz'], r'^statistics of different dimensions: 3-d .* and 4-d'),
        (['one', 'stats3.npz'], r'one: FID statistics need at least 2 images, got 1'),
        (
            ['tfds:mnistt', 'stats3.npz'],
            r"^Unknown TFDS dataset 'mnistt'.*mnist.*\(in tfds:mnistt; the form is tfds:NAME",
        ),
        (['stats3.npz', 'tfds:mnist:validation'], r"no split 'validation'; splits: .*test"),
        (['stats3.npz'], r'give two paths'),
    ],
)
def test_bad_input_is_one_line_on_stderr(tmp_path, capsys, paths, message):
  root = bad_inputs(tmp_path)
  assert run_cli(*[p if p.startswith('tfds:') else root / p for p in paths]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: '), err
  assert re.search(message, err[0].removeprefix('error: ')), err[0]


@pytest.mark.parametrize(
    'flags, message',
    [
        (['--batch_size=0'], r'^--batch_size must be positive, got 0\.$'),
        (['--metrics=is', '--is_splits=0'], r'^--is_splits must be positive, got 0\.$'),
        (['--metrics=kid', '--kid_subsets=0'], r'^--kid_subsets must be positive, got 0\.$'),
        (
            ['--metrics=kid'],
            r'a: the KID subset size 1000 must lie in \[2, its 5 images\]; pass --kid_subset_size in that range',
        ),
        (['--metrics=kid', '--kid_subset_size=1'], r'the KID subset size 1 must lie in \[2, its 5 images\]'),
        (['--metrics=pr', '--pr_block_size=0'], r'^--pr_block_size must be positive, got 0\.$'),
        (['--save_stats', '--batch_size=-1'], r'^--batch_size must be positive, got -1\.$'),
    ],
)
def test_sizes_are_checked_before_any_work(tmp_path, capsys, monkeypatch, flags, message):
  # Issue 30, finding 12: --batch_size=0 was a ZeroDivisionError traceback, --is_splits=0 printed NaN as
  # JSON, and the KID and precision/recall sizes were checked after both sets had been extracted.
  from inception_jax.metrics import calculate  # pylint: disable=g-import-not-at-top

  def no_work(*args, **kwargs):
    raise AssertionError('work began before the flags were checked')

  monkeypatch.setattr(calculate, 'load_fid_inception', no_work)
  monkeypatch.setattr(calculate, 'compute_statistics', no_work)
  write_pngs(tmp_path / 'a', np.zeros((5, 8, 8, 3), np.uint8))
  write_pngs(tmp_path / 'b', np.zeros((5, 8, 8, 3), np.uint8))
  out = [tmp_path / 'out.npz'] if '--save_stats' in flags else [tmp_path / 'b']
  assert run_cli(tmp_path / 'a', *out, *flags) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and re.search(message, err[0].removeprefix('error: ')), err
  assert not (tmp_path / 'out.npz').exists()


def test_cli_errors_exit_with_status_1_and_no_traceback(tmp_path):
  root = bad_inputs(tmp_path)
  run = subprocess.run(
      [sys.executable, '-m', 'scripts.fid', root / 'stats3.npz', root / 'stats4.npz'],
      cwd=ROOT,
      capture_output=True,
      text=True,
      env=dict(os.environ, PYTHONPATH=str(ROOT)),
  )
  assert run.returncode == 1 and 'Traceback' not in run.stderr, run.stderr
  assert run.stderr.strip().splitlines()[-1].startswith('error: statistics of different dimensions')


def test_weights_download_once_checked_by_sha256_and_offline_error(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
  payload = b'weights'
  digest = hashlib.sha256(payload).hexdigest()
  for prefix in (digest[:8], '0123abcd'):
    (tmp_path / 'server').mkdir(exist_ok=True)
    (tmp_path / 'server' / f'pt_inception-{prefix}.pth').write_bytes(payload)
    monkeypatch.setattr(
        metrics.weights, 'FID_WEIGHTS_URL', (tmp_path / 'server' / f'pt_inception-{prefix}.pth').as_uri()
    )
    if prefix == digest[:8]:
      path = metrics.fid_weights_file(str(tmp_path / 'cache'))
      assert path == str(tmp_path / 'cache' / f'pt_inception-{prefix}.pth') and open(path, 'rb').read() == payload
    else:
      with pytest.raises(ValueError, match='sha256 .* not 0123abcd'):
        metrics.fid_weights_file(str(tmp_path / 'cache'))
  assert sorted(os.listdir(tmp_path / 'cache')) == [f'pt_inception-{digest[:8]}.pth']  # nothing partial kept

  # Offline, no --weights: the error names the file and the flag (port 9 refuses connections).
  monkeypatch.setattr(metrics.weights, 'FID_WEIGHTS_URL', 'http://127.0.0.1:9/pt_inception-2015-12-05-6726825d.pth')
  monkeypatch.setenv(metrics.CACHE_ENV, str(tmp_path / 'empty_cache'))
  write_pngs(tmp_path / 'a', np.zeros((2, 8, 8, 3), np.uint8))
  assert run_cli(tmp_path / 'a', tmp_path / 'a') == 1
  err = capsys.readouterr().err
  assert 'could not download pt_inception-2015-12-05-6726825d.pth' in err and '--weights=' in err


# Independence of batch size, device count and statistics files: 8 fake CPU devices, in a
# subprocess since the device count is fixed when JAX starts. At --dims=768 (through Mixed_6e)
# without the resize to 299 (75x75 images), compiled without LLVM's optimizations: 4 quick
# compilations. The subprocess writes each configuration's statistics as --save_stats does;
# the FIDs are taken here (unoptimized float64 matmuls would be slow there).


def run_independence(folder: str, weights: str) -> None:
  model, variables = metrics.load_fid_inception(weights)
  sources = [f'{folder}/a.npz', f'{folder}/b.npz']
  for devices in (1, 8):
    for batch_size in (7, 64):  # several batches, the last partial; one batch larger than the set
      extractor = metrics.Extractor(model, variables, dims=768, mesh=parallel.make_mesh(devices), resize=False)
      for i, source in enumerate(sources):
        stats = metrics.compute_statistics(metrics.open_path(source), extractor, batch_size=batch_size)
        stats.save(f'{folder}/{devices} devices, batch {batch_size}.{i}.npz')
      # tf1 (the ADM evaluator's preprocessing) with every image's features and logits: IS, precision and recall.
      extractor = metrics.Extractor(
          model, variables, dims=768, mesh=parallel.make_mesh(devices), resize=False, logits=True, preprocess='tf1'
      )
      for i, source in enumerate(sources):
        stats = metrics.compute_statistics(
            metrics.open_path(source), extractor, batch_size=batch_size, keep_features=True, keep_logits=True
        )
        np.savez(
            f'{folder}/tf1 {devices} devices, batch {batch_size}.{i}.npz',
            features=stats.features,
            logits=stats.logits,
            **stats.arrays(),
        )
  # A training loop's batches: global arrays already on the 8 devices, the last one partial.
  mesh = parallel.make_mesh(8)
  extractor = metrics.Extractor(model, variables, dims=768, mesh=mesh, resize=False)
  for i, source in enumerate(sources):
    with np.load(source) as f:
      images = f['arr_0']
    accumulator = metrics.Accumulator(extractor)
    for start in range(0, len(images), 8):
      batch = np.zeros((8, *images.shape[1:]), np.uint8)
      batch[: len(images[start : start + 8])] = images[start : start + 8]
      accumulator.update(jax.device_put(batch, parallel.batch_sharding(mesh)), num_valid=min(8, len(images) - start))
    accumulator.result().save(f'{folder}/jax.Array batches.{i}.npz')


def test_fid_does_not_depend_on_batch_size_devices_or_statistics_files(network, tmp_path):
  rng = np.random.default_rng(3)
  # Half of each set from one distribution: precision and recall lie between 0 and 1.
  np.savez(
      tmp_path / 'a.npz',
      np.concatenate([rng.integers(0, 256, (5, 75, 75, 3), np.uint8), rng.integers(0, 80, (5, 75, 75, 3), np.uint8)]),
  )
  np.savez(
      tmp_path / 'b.npz',
      np.concatenate([rng.integers(0, 256, (5, 75, 75, 3), np.uint8), rng.integers(40, 200, (5, 75, 75, 3), np.uint8)]),
  )
  script = (
      f'import sys; sys.path.insert(0, {str(ROOT / "tests")!r}); import test_metrics; '
      f'test_metrics.run_independence({str(tmp_path)!r}, {network.converted!r})'
  )
  env = dict(
      os.environ,
      PYTHONPATH=str(ROOT),
      XLA_FLAGS='--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0',
  )
  run = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env, cwd=ROOT)
  assert run.returncode == 0, run.stderr[-3000:]
  names = sorted({p.name.rsplit('.', 2)[0] for p in tmp_path.glob('*.[01].npz') if not p.name.startswith('tf1 ')})
  assert len(names) == 5, names
  fids = {
      name: metrics.fid(*[metrics.Statistics.load(str(tmp_path / f'{name}.{i}.npz')) for i in (0, 1)]) for name in names
  }
  reference = fids['1 devices, batch 64']
  assert reference > 0 and all(metrics.Statistics.load(str(tmp_path / f'{n}.0.npz')).num_images == 10 for n in names)
  for name, value in fids.items():
    assert value == pytest.approx(reference, rel=1e-6), name
  # The ADM row's inputs under tf1: FID, IS, and precision/recall at two block sizes, on 1 and 8 devices.
  tf1 = {name: [dict(np.load(tmp_path / f'tf1 {name}.{i}.npz')) for i in (0, 1)] for name in names if 'devices' in name}
  assert len(tf1) == 4
  row = lambda a, b, block: (
      metrics.frechet_distance(a['mu'], a['sigma'], b['mu'], b['sigma']),
      metrics.inception_score_adm(a['logits']),
      *metrics.precision_recall(b['features'], a['features'], block_size=block),
  )
  expected = row(*tf1['1 devices, batch 64'], None)
  assert expected[0] > 0 and 0 < expected[2] < 1 and 0 < expected[3] < 1 and expected[0] != pytest.approx(reference)
  for name, (a, b) in tf1.items():
    for block in (None, 3):
      assert row(a, b, block) == pytest.approx(expected, rel=1e-6), (name, block)


# Several processes: statistics and kept rows merge across jax.distributed processes.


def distributed_worker(coordinator: str, process_id: int, out: str) -> None:
  jax.distributed.initialize(coordinator, 2, process_id)
  assert (jax.process_count(), jax.device_count()) == (2, 4)
  images = (np.random.default_rng(0).normal(size=(30, 2, 3, 2)) + 5).astype(np.float32)
  accumulator = metrics.Accumulator(PixelFeatures(parallel.make_mesh()), keep_features=True, keep_logits=True)
  for start in range(0, 30, 8):  # global batches of 8: each process's 4 rows, the last batch partial
    batch = np.zeros((8, 2, 3, 2), np.float32)
    batch[: len(images[start : start + 8])] = images[start : start + 8]
    accumulator.update(batch[4 * process_id : 4 * process_id + 4], num_valid=min(8, 30 - start))
  stats = accumulator.result()
  np.savez(
      out.format(process_id),
      mu=stats.mu,
      sigma=stats.sigma,
      features=stats.features,
      logits=stats.logits,
      count=stats.num_images,
  )
  jax.distributed.shutdown()


def test_two_processes_merge_statistics_and_rows_in_order(tmp_path):
  out = str(tmp_path / 'process{}.npz')
  processes.run_two('test_metrics', 'distributed_worker', out)
  rows = (np.random.default_rng(0).normal(size=(30, 2, 3, 2)) + 5).astype(np.float32).reshape(30, -1)
  features = rows.astype(np.float64)
  for i in range(2):  # every process has the whole set's statistics
    with np.load(out.format(i)) as f:
      assert int(f['count']) == 30
      np.testing.assert_allclose(f['mu'], features.mean(axis=0), rtol=1e-12)
      np.testing.assert_allclose(f['sigma'], np.cov(features, rowvar=False), rtol=1e-10, atol=1e-12)
      np.testing.assert_array_equal(f['features'], rows)
      np.testing.assert_array_equal(f['logits'], 2 * rows)
