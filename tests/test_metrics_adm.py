"""The tools papers report from, end to end: the ADM evaluator's row (guided-diffusion
`evaluations/evaluator.py`): sFID's spatial features against pytorch-fid's torch network; FID,
sFID, IS, precision and recall against the evaluator's own code on the same features
(scripts/tf_refs, run under tensorflow.compat.v1 in a subprocess); its reference-batch format
both ways. torch-fidelity's TF1 features and clean-fid's 'clean' features. Full float32
precision in the lowered programs, and the one-line errors."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from inception_jax import metrics, parallel
from inception_jax.metrics import distances, features, preprocessing
from scripts.torch_refs import pytorch_fid_inception as fid_ref
from test_metrics import run_cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


def one_line_error(call, pattern):
  with pytest.raises(ValueError, match=pattern) as info:
    call()
  assert '\n' not in str(info.value)


@pytest.fixture(scope='module')
def batches(tmp_path_factory):
  """Samples and a reference as ADM's .npz batches: 40x48 uint8 images (not 299); 7 of the 13
  samples from the reference's distribution, so precision and recall lie between 0 and 1."""
  root, rng = tmp_path_factory.mktemp('adm'), np.random.default_rng(0)
  reference = np.clip(rng.normal(150, 40, (11, 40, 48, 3)), 0, 255).astype(np.uint8)
  like_reference = np.clip(rng.normal(150, 40, (7, 40, 48, 3)), 0, 255).astype(np.uint8)
  samples = np.concatenate([like_reference, rng.integers(0, 256, (6, 40, 48, 3), np.uint8)])
  np.savez(root / 'samples.npz', samples)
  np.savez(root / 'reference.npz', reference)
  return root


def test_spatial_features_are_mixed_6d_branch1x1_first_7_channels_in_hwc_order(network):
  """sFID's features are the graph's mixed_6/conv (torch-fidelity's util_convert_inception_weights.py
  L137-138: Mixed_6d.branch1x1, after its ReLU) [..., :7], flattened in (h, w, c) order
  (evaluator.py L157-158 on NHWC maps): checked against a forward hook on pytorch-fid's torch network."""
  images = np.random.default_rng(1).integers(0, 256, (3, 299, 299, 3), np.uint8)
  extractor = metrics.Extractor(network.model, network.variables, spatial=True)
  out = extractor(jax.device_put(images, parallel.batch_sharding(extractor.mesh)), 3)
  maps = []
  hook = network.torch.Mixed_6d.branch1x1.register_forward_hook(lambda module, inputs, output: maps.append(output))
  try:
    with torch.inference_mode():
      network.torch(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 * 2 - 1)
  finally:
    hook.remove()
  expected = maps[0].permute(0, 2, 3, 1)[..., :7].reshape(3, -1).numpy()  # NCHW -> NHWC, then flatten
  assert out['spatial'].shape == (3, metrics.SPATIAL_DIMS) == (3, 2023)
  assert expected.std() > 0.1  # calibrated weights: the features do not vanish
  np.testing.assert_allclose(np.asarray(out['spatial']), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_tf1_features_equal_torch_fidelitys_inception_v3_compat_end_to_end(network, tmp_path):
  """A folder of 40x48 PNGs read by our FolderImages with preprocess='tf1', against torch-fidelity's
  extractor (scripts/torch_refs/torch_fidelity_inception.py: torch-fidelity needs torchvision,
  which does not install beside this torch, so its forward's preprocessing is re-typed line by
  line on pytorch-fid's network, which is the same graph) on the same uint8 images."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from scripts.torch_refs import torch_fidelity_inception  # pylint: disable=g-import-not-at-top

  images = np.random.default_rng(4).integers(0, 256, (8, 40, 48, 3), np.uint8)  # 8: the ADM tests' compiled step
  for i, image in enumerate(images):
    Image.fromarray(image).save(tmp_path / f'{i}.png')
  extractor = metrics.Extractor(network.model, network.variables, logits=True, preprocess='tf1')
  ours = metrics.compute_statistics(metrics.open_path(str(tmp_path)), extractor, keep_features=True, keep_logits=True)
  with torch.inference_mode():
    theirs = torch_fidelity_inception.FeatureExtractorInceptionV3(network.torch)(
        torch.from_numpy(images).permute(0, 3, 1, 2)
    )
  for key, name in (('features', '2048'), ('logits', 'logits_unbiased')):
    expected = theirs[name].numpy()
    assert expected.std() > 0.05  # calibrated weights: features that do not vanish
    np.testing.assert_allclose(getattr(ours, key), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
  # pytorch-fid's half-pixel resize and [-1, 1] scaling give other features: the comparison discriminates.
  half_pixel = metrics.compute_statistics(
      metrics.open_path(str(tmp_path)), metrics.Extractor(network.model, network.variables), keep_features=True
  )
  assert np.abs(half_pixel.features - theirs['2048'].numpy()).max() > 100 * 1e-4 * np.abs(theirs['2048'].numpy()).max()


def test_clean_features_equal_clean_fids_pipeline_and_the_cli_runs_it(network, tmp_path, capsys):
  """clean-fid's 'clean' mode: its resize (bit for bit in test_metrics_preprocessing.py), then
  (x - 128) / 128 into the same graph (inception_torchscript.py L49-54), here pytorch-fid's torch
  network. Through a folder and the command line, and through Accumulator with a global
  jax.Array batch (the images then go through the host for PIL)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(5)
  images = {'a': rng.integers(0, 256, (6, 40, 48, 3), np.uint8), 'b': rng.integers(30, 220, (6, 40, 48, 3), np.uint8)}
  for name, batch in images.items():
    (tmp_path / name).mkdir()
    for i, image in enumerate(batch):
      Image.fromarray(image).save(tmp_path / name / f'{i}.png')
  extractor = metrics.Extractor(network.model, network.variables, preprocess='clean')
  ours = metrics.compute_statistics(metrics.open_path(str(tmp_path / 'a')), extractor, keep_features=True, batch_size=6)
  with torch.inference_mode():
    pixels = torch.from_numpy(preprocessing.resize_clean(images['a'])).permute(0, 3, 1, 2)
    trunk = fid_ref.InceptionV3(network.torch, resize_input=False, normalize_input=False)
    expected = torch.flatten(trunk((pixels - 128) / 128)[0], 1).numpy()
  np.testing.assert_allclose(ours.features, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
  accumulator = metrics.Accumulator(extractor)
  accumulator.update(jax.device_put(images['a'], parallel.batch_sharding(extractor.mesh)))
  np.testing.assert_allclose(accumulator.result().mu, ours.mu, rtol=1e-6, atol=1e-9)
  flags = [f'--weights={network.pth}', '--preprocess=clean', '--metrics=fid,kid', '--kid_subset_size=5', '--json']
  assert run_cli(tmp_path / 'a', tmp_path / 'b', *flags) == 0
  result = json.loads(capsys.readouterr().out.splitlines()[-1])
  assert result['preprocess'] == 'clean' and result['fid'] > 0 and set(result) >= {'kid_mean', 'kid_std'}


def run_evaluator(tmp_path, arrays) -> tuple[dict, dict]:
  """The evaluator's own functions on `arrays` (scripts/tf_refs/run_adm_evaluator.py), in a subprocess:
  it switches TensorFlow to graph mode."""
  np.savez(tmp_path / 'features.npz', **arrays)
  run = subprocess.run(
      [sys.executable, '-m', 'scripts.tf_refs.run_adm_evaluator', tmp_path / 'features.npz', tmp_path / 'out.json'],
      capture_output=True,
      text=True,
      cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES=''),
  )
  assert run.returncode == 0, run.stderr[-3000:]
  with np.load(tmp_path / 'out.npz') as f:
    return json.loads((tmp_path / 'out.json').read_text()), dict(f)


def test_adm_suite_equals_the_evaluators_own_code_on_the_same_features(network, batches, tmp_path):
  ours = metrics.calculate_metrics(
      [str(batches / 'samples.npz'), str(batches / 'reference.npz')], suite='adm', weights=network.pth, batch_size=8
  )
  assert list(ours)[:5] == ['inception_score', 'fid', 'sfid', 'precision', 'recall']  # the evaluator's order
  assert ours['preprocess'] == 'tf1' and (ours['num_images_1'], ours['num_images_2']) == (13, 11)
  # The same network's features (batches of 8, as above: the same compiled step), handed to the evaluator's functions.
  extractor = metrics.Extractor(network.model, network.variables, logits=True, spatial=True, preprocess='tf1')
  sides = {}
  for name, file in (('sample', 'samples.npz'), ('ref', 'reference.npz')):
    source, rows = metrics.open_path(str(batches / file)), []
    for start in range(0, source.num_images, 8):
      images = source.read(start, min(start + 8, source.num_images))
      batch = np.concatenate([images, np.zeros((8 - len(images), *images.shape[1:]), np.uint8)])
      out = extractor(jax.device_put(batch, parallel.batch_sharding(extractor.mesh)), len(images))
      rows.append({key: np.asarray(value)[: len(images)] for key, value in out.items()})
    sides[name] = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
  logits = sides['sample']['logits'].astype(np.float64)
  softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
  arrays = {
      'ref_pool': sides['ref']['features'],
      'sample_pool': sides['sample']['features'],
      'ref_spatial': sides['ref']['spatial'],
      'sample_spatial': sides['sample']['spatial'],
      'sample_softmax': (softmax / softmax.sum(axis=1, keepdims=True)).astype(np.float32),
  }
  theirs, status = run_evaluator(tmp_path, arrays)
  assert ours['fid'] > 1 and ours['sfid'] > 1 and ours['inception_score'] > 1
  for key in ('fid', 'sfid', 'inception_score'):
    assert ours[key] == pytest.approx(theirs[key], rel=1e-6), key
  # Its float16 distances decide the same for these sets (tests/test_metrics_precision_recall.py
  # counts the flips on 2048-d sets of realistic size).
  assert (ours['precision'], ours['recall']) == (theirs['precision'], theirs['recall'])
  assert 0 < status['sample_status'].mean() == ours['precision'] < 1 and 0 < ours['recall']


def test_a_reference_batch_in_adm_format_round_trips_and_its_statistics_are_used(network, batches, tmp_path, capsys):
  """--save_stats --suite=adm writes arr_0 (the images, from a folder here) with mu, sigma, mu_s
  and sigma_s, as the evaluator's reference batches; reading one, FID and sFID use the file's
  statistics, not the images' (evaluator.py L164-172), while precision and recall use arr_0."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  folder = tmp_path / 'ref_images'
  folder.mkdir()
  with np.load(batches / 'reference.npz') as f:
    images = f['arr_0']
  for i, image in enumerate(images):
    Image.fromarray(image).save(folder / f'{i:02d}.png')
  options = dict(suite='adm', weights=network.pth, batch_size=8)
  ref = metrics.save_statistics(str(folder), str(tmp_path / 'ref.npz'), **options)
  with np.load(tmp_path / 'ref.npz', allow_pickle=False) as f:  # what the evaluator's np.load sees
    np.testing.assert_array_equal(f['arr_0'], images)
    assert f['mu'].shape == (2048,) and f['sigma_s'].shape == (2023, 2023) and str(f['preprocess']) == 'tf1'
    np.testing.assert_array_equal(f['mu_s'], ref.mu_s)
    arrays = dict(f)
  umask = os.umask(0)
  os.umask(umask)
  assert (tmp_path / 'ref.npz').stat().st_mode & 0o777 == 0o666 & ~umask  # as np.savez leaves a file
  samples = metrics.save_statistics(str(batches / 'samples.npz'), str(tmp_path / 'samples_stats.npz'), **options)
  # The stored means moved: FID and sFID follow the file, precision and recall the images.
  shift = np.zeros(2048)
  shift[:4] = 3.0
  np.savez(tmp_path / 'moved.npz', **(arrays | {'mu': arrays['mu'] + shift, 'mu_s': arrays['mu_s'] + 1}))
  # Through the command line, which prints the evaluator's five lines in its order, then ours.
  assert (
      run_cli(
          batches / 'samples.npz', tmp_path / 'moved.npz', '--suite=adm', f'--weights={network.pth}', '--batch_size=8'
      )
      == 0
  )
  lines = capsys.readouterr().out.splitlines()
  assert [line.split(':')[0] for line in lines[:5]] == ['Inception Score', 'FID', 'sFID', 'Precision', 'Recall']
  moved = {
      key: float(line.split(': ')[1])
      for key, line in zip(('inception_score', 'fid', 'sfid', 'precision', 'recall'), lines)
  }
  assert moved['fid'] == pytest.approx(
      metrics.frechet_distance(samples.mu, samples.sigma, ref.mu + shift, ref.sigma), rel=1e-6
  )
  assert moved['sfid'] == pytest.approx(
      metrics.frechet_distance(samples.mu_s, samples.sigma_s, ref.mu_s + 1, ref.sigma_s), rel=1e-6
  )
  unmoved = metrics.frechet_distance(samples.mu, samples.sigma, ref.mu, ref.sigma)
  assert moved['fid'] > unmoved + 1 and 0 < moved['precision'] < 1


def test_adm_inception_score_is_consecutive_splits_of_5000_in_order():
  """evaluator.py L179-192 restated: splits [0, 5000), [5000, 10000), ... of the softmax, no shuffle, mean only."""
  logits = np.random.default_rng(2).normal(0, 3, (12000, 10))
  p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  scores = []
  for i in range(0, len(p), 5000):
    part = p[i : i + 5000]
    kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  assert metrics.inception_score_adm(logits) == pytest.approx(float(np.mean(scores)), rel=1e-12)
  assert metrics.inception_score_adm(logits) != pytest.approx(metrics.inception_score_adm(logits[::-1]), rel=1e-6)


def contractions(text: str) -> list[str]:
  return [line for line in text.splitlines() if 'stablehlo.dot_general' in line or 'stablehlo.convolution' in line]


def test_every_contraction_of_the_metric_path_runs_at_full_float32_precision(network):
  """On GPU and TPU a float32 contraction without a precision runs with TF32 or bfloat16 passes:
  the extraction step (each preprocessing), the Frechet distance and the precision/recall
  blocks are lowered with HIGHEST on every dot and convolution."""
  mesh = parallel.make_mesh()
  for preprocess in metrics.PREPROCESSING:
    step = features._extract_step(network.model, mesh, 2048, True, True, True, preprocess)
    size = 299 if preprocess == 'clean' else 64
    images = jax.ShapeDtypeStruct((2, size, size, 3), np.float32 if preprocess == 'clean' else np.uint8)
    lines = contractions(step.lower(network.variables, images, np.int32(2)).as_text())
    assert len(lines) > 90, preprocess  # every convolution of the network, and the logits' matmul
    assert all(
        'HIGHEST, HIGHEST' in line or 'precision HIGHEST>, #stablehlo<precision HIGHEST' in line for line in lines
    )
  with jax.enable_x64(True), jax.default_matmul_precision('highest'):
    sigma = jax.ShapeDtypeStruct((4, 4), np.float64)
    mu = jax.ShapeDtypeStruct((4,), np.float64)
    lines = contractions(distances._frechet.lower(mu, sigma, mu, sigma).as_text())
  assert lines and all('HIGHEST, HIGHEST' in line for line in lines)


def test_bad_adm_inputs_are_one_line(batches, tmp_path, capsys):
  """Each refused before any network pass (no weights are even loaded)."""
  samples, reference = str(batches / 'samples.npz'), str(batches / 'reference.npz')
  np.savez(tmp_path / 'neither.npz', images=np.zeros((2, 8, 8, 3), np.uint8))
  one_line_error(
      lambda: metrics.open_path(str(tmp_path / 'neither.npz')), r'neither statistics \(mu, sigma\) nor images \(arr_0\)'
  )
  # Statistics from another preprocessing, or of another dimension.
  rng = np.random.default_rng(0)
  moments = lambda d: (rng.normal(size=d), np.eye(d))
  metrics.Statistics(*moments(2048), 10, preprocess='clean').save(tmp_path / 'clean.npz')
  metrics.Statistics(*moments(2048), 10, preprocess='tf1').save(tmp_path / 'tf1.npz')
  metrics.Statistics(*moments(64), 10, preprocess='tf1').save(tmp_path / 'tf1_64.npz')
  clean, tf1 = (metrics.Statistics.load(str(tmp_path / f'{name}.npz')) for name in ('clean', 'tf1'))
  assert (clean.preprocess, tf1.preprocess, tf1.mu_s) == ('clean', 'tf1', None)
  one_line_error(
      lambda: metrics.calculate_metrics([samples, str(tmp_path / 'clean.npz')], preprocess='tf1'),
      r'clean\.npz holds statistics made with --preprocess=clean, not tf1',
  )
  one_line_error(lambda: metrics.fid(clean, tf1), r'--preprocess=clean and --preprocess=tf1 are not comparable')
  one_line_error(
      lambda: metrics.calculate_metrics([samples, str(tmp_path / 'tf1_64.npz')], preprocess='tf1'),
      r'holds 64-d statistics, but --dims=2048',
  )
  # Too few images for k = 3 nearest neighbours.
  np.savez(tmp_path / 'three.npz', np.zeros((3, 40, 48, 3), np.uint8))
  one_line_error(
      lambda: metrics.calculate_metrics([str(tmp_path / 'three.npz'), reference], metrics=('pr',)),
      r'three\.npz: precision and recall with k=3 need at least 4 images in each set, got 3',
  )
  # sFID against statistics without mu_s and no images to compute them from.
  one_line_error(
      lambda: metrics.calculate_metrics([samples, str(tmp_path / 'tf1.npz')], metrics=('sfid',), preprocess='tf1'),
      r'tf1\.npz holds no spatial statistics \(mu_s, sigma_s\) for sFID, and no images',
  )
  one_line_error(
      lambda: metrics.calculate_metrics([samples, reference], suite='adm', preprocess='clean'), r'\(tf1\), not clean'
  )
  one_line_error(lambda: metrics.calculate_metrics([samples, reference], preprocess='tf2'), r'tf2')
  one_line_error(lambda: metrics.calculate_metrics([samples, reference], suite='adm', dims=768), r'not --dims=768')
  assert run_cli(samples, reference, '--suite=adm', '--metrics=kid') == 1
  assert capsys.readouterr().err == 'error: --suite=adm computes its own metrics; drop --metrics (or --suite).\n'
  one_line_error(
      lambda: metrics.save_statistics(samples, str(tmp_path / 'absent' / 'ref.npz'), suite='adm'),
      r'absent is not a folder this process can write to',
  )


def test_a_reference_batchs_statistics_spare_the_pass_and_are_the_evaluators_tf1(batches, tmp_path):
  """An ADM reference batch (arr_0 with mu, sigma, no record of its preprocessing): FID against
  statistics reads no image and loads no weights; under another preprocessing its tf1 statistics
  are not used, its images are (here: the weights they would need are absent)."""
  with np.load(batches / 'reference.npz') as f:
    images = f['arr_0']
  rng = np.random.default_rng(6)
  ref_mu, sample_mu = rng.normal(size=64), rng.normal(size=64)
  np.savez(tmp_path / 'adm_ref.npz', arr_0=images, mu=ref_mu, sigma=np.eye(64))
  metrics.Statistics(sample_mu, 2 * np.eye(64), 13, preprocess='tf1').save(tmp_path / 'samples.npz')
  paths = [str(tmp_path / 'samples.npz'), str(tmp_path / 'adm_ref.npz')]
  result = metrics.calculate_metrics(paths, preprocess='tf1', dims=64, weights=str(tmp_path / 'no_weights.pth'))
  expected = metrics.frechet_distance(sample_mu, 2 * np.eye(64), ref_mu, np.eye(64))
  assert result['fid'] == pytest.approx(expected, rel=1e-9) and result['num_images_2'] == 11
  metrics.Statistics(sample_mu, 2 * np.eye(64), 13, preprocess='pytorch_fid').save(tmp_path / 'samples_pt.npz')
  one_line_error(
      lambda: metrics.calculate_metrics(
          [str(tmp_path / 'samples_pt.npz'), str(tmp_path / 'adm_ref.npz')],
          dims=64,
          weights=str(tmp_path / 'no_weights.pth'),
      ),
      r'no_weights\.pth: no such file',
  )
