"""Runs the ADM evaluator's own metric code (adm_evaluator.py) on precomputed Inception features.

  python -m scripts.tf_refs.run_adm_evaluator IN.npz OUT.json [--row_batch_size N] [--col_batch_size N]

IN.npz may hold any of
  ref_pool, sample_pool          [N, 2048] float32 pool_3 features   -> fid, precision, recall
  ref_spatial, sample_spatial    [N, 2023] float32 mixed_6/conv[..., :7] features -> sfid
  sample_softmax                 [N, 1008] float32 softmax probabilities -> inception_score
and every metric its inputs allow is computed, in TF1 graph mode, by the evaluator's code:

  fid / sfid       `Evaluator.compute_statistics` (np.mean, np.cov) -> `FIDStatistics.frechet_distance`
  inception_score  `Evaluator.compute_inception_score` (split_size 5000). The evaluator computes the
                   softmax itself from pool_3 with the Inception graph's logits weights (a download);
                   here its `self.softmax` is `tf.identity` of the given probabilities, so everything
                   after the softmax is its code.
  precision/recall `Evaluator.compute_prec_recall` on a `ManifoldEstimator(session, row_batch_size,
                   col_batch_size)` (defaults 10000, 10000, nhood_sizes=(3,)): float16 `DistanceBlock`.

No Evaluator is constructed (its __init__ downloads the Inception graph); its methods are called
unbound on a stand-in `self` that holds only the attributes they read.

OUT.json gets the metrics; OUT.npz (next to it) gets, when pool features are given,
  ref_radii [N_ref, 1], sample_radii [N_sample, 1]   `ManifoldEstimator.manifold_radii` (squared
      distances to the 3rd nearest neighbour, the point itself counted as the 0th)
  ref_status [N_ref, 1] bool      ref point inside some sample hypersphere (its mean is the recall)
  sample_status [N_sample, 1] bool sample point inside some ref hypersphere (its mean is the precision)
The status arrays are `evaluate_pr`'s locals `features_1_status` / `features_2_status`, read from its
frame as it returns (a `sys.setprofile` hook), so they are exactly what its means were taken over.
With only one of ref_pool / sample_pool, just that one's radii are written.
"""

import argparse
import json
import os
import sys
import time
import types

import numpy as np

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

import tensorflow.compat.v1 as tf  # noqa: E402

from scripts.tf_refs import adm_evaluator as adm  # noqa: E402

UPSTREAM = (
    'https://github.com/openai/guided-diffusion/blob/22e0df8183507e13a7813f8d38d51b072ca1e67c/evaluations/evaluator.py'
)


class _ReturnCapture:
  """A `sys.setprofile` hook recording, for the given functions, return values and final locals."""

  def __init__(self, *functions):
    self._codes = {f.__code__: f.__name__ for f in functions}
    self.returns = {name: [] for name in self._codes.values()}
    self.locals = {name: [] for name in self._codes.values()}
    self._previous = None

  def _hook(self, frame, event, arg):
    if event == 'return' and frame.f_code in self._codes:
      name = self._codes[frame.f_code]
      self.returns[name].append(arg)
      self.locals[name].append(dict(frame.f_locals))

  def __enter__(self):
    self._previous = sys.getprofile()
    sys.setprofile(self._hook)
    return self

  def __exit__(self, *exc):
    sys.setprofile(self._previous)


def run(arrays, row_batch_size=10000, col_batch_size=10000, split_size=5000, session_config=None):
  """The evaluator's metrics on a dict of feature arrays: (results dict, extra arrays dict)."""
  tf.disable_eager_execution()
  results = {
      'evaluator': UPSTREAM,
      'tensorflow': tf.__version__,
      'numpy': np.__version__,
      'TF_ENABLE_ONEDNN_OPTS': os.environ.get('TF_ENABLE_ONEDNN_OPTS'),
  }
  extra = {}
  timings = {}
  if session_config is None:
    # As the evaluator's main().
    session_config = tf.ConfigProto(allow_soft_placement=True)
    session_config.gpu_options.allow_growth = True
  graph = tf.Graph()
  with graph.as_default():
    sess = tf.Session(graph=graph, config=session_config)
  with sess:
    for name, key in (('fid', 'pool'), ('sfid', 'spatial')):
      ref, sample = arrays.get(f'ref_{key}'), arrays.get(f'sample_{key}')
      if ref is None or sample is None:
        continue
      t0 = time.perf_counter()
      # compute_statistics and frechet_distance as in the evaluator's main(): sample.frechet_distance(ref).
      ref_stats = adm.Evaluator.compute_statistics(None, ref)
      sample_stats = adm.Evaluator.compute_statistics(None, sample)
      results[name] = float(sample_stats.frechet_distance(ref_stats))
      timings[name] = time.perf_counter() - t0

    probs = arrays.get('sample_softmax')
    if probs is not None:
      t0 = time.perf_counter()
      with graph.as_default():
        softmax_input = tf.placeholder(tf.float32, shape=[None, None])
        softmax = tf.identity(softmax_input)
      stand_in = types.SimpleNamespace(
          sess=sess, softmax_batch_size=512, softmax_input=softmax_input, softmax=softmax
      )  # Evaluator's default softmax_batch_size.
      results['inception_score'] = adm.Evaluator.compute_inception_score(stand_in, probs, split_size=split_size)
      results['inception_score_split_size'] = split_size
      timings['inception_score'] = time.perf_counter() - t0

    ref, sample = arrays.get('ref_pool'), arrays.get('sample_pool')
    if ref is not None or sample is not None:
      estimator = adm.ManifoldEstimator(sess, row_batch_size=row_batch_size, col_batch_size=col_batch_size)
      results['row_batch_size'] = estimator.row_batch_size
      results['col_batch_size'] = estimator.col_batch_size
      results['nhood_sizes'] = list(estimator.nhood_sizes)
      t0 = time.perf_counter()
      if ref is not None and sample is not None:
        stand_in = types.SimpleNamespace(manifold_estimator=estimator)
        with _ReturnCapture(adm.ManifoldEstimator.manifold_radii, adm.ManifoldEstimator.evaluate_pr) as capture:
          precision, recall = adm.Evaluator.compute_prec_recall(stand_in, ref, sample)
        results['precision'], results['recall'] = precision, recall
        extra['ref_radii'], extra['sample_radii'] = capture.returns['manifold_radii']
        (pr_locals,) = capture.locals['evaluate_pr']
        extra['ref_status'] = pr_locals['features_1_status']
        extra['sample_status'] = pr_locals['features_2_status']
        # The captured arrays are the ones the evaluator averaged.
        assert float(extra['sample_status'][:, 0].astype(np.float64).mean()) == precision
        assert float(extra['ref_status'][:, 0].astype(np.float64).mean()) == recall
      else:
        key = 'ref' if ref is not None else 'sample'
        extra[f'{key}_radii'] = estimator.manifold_radii(ref if ref is not None else sample)
      timings['prec_recall'] = time.perf_counter() - t0
  results['seconds'] = timings
  return results, extra


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
      'input', help='npz with any of ref_pool, sample_pool, ref_spatial, sample_spatial, sample_softmax'
  )
  parser.add_argument('output', help='JSON path; radii/status arrays go to the same path with .npz')
  parser.add_argument('--row_batch_size', type=int, default=10000, help='ManifoldEstimator row_batch_size')
  parser.add_argument('--col_batch_size', type=int, default=10000, help='ManifoldEstimator col_batch_size')
  parser.add_argument('--split_size', type=int, default=5000, help='compute_inception_score split_size')
  args = parser.parse_args(argv)

  keys = ('ref_pool', 'sample_pool', 'ref_spatial', 'sample_spatial', 'sample_softmax')
  with np.load(args.input) as f:
    arrays = {k: np.asarray(f[k]) for k in keys if k in f.files}
  if not arrays:
    parser.error(f'{args.input} holds none of {keys}')
  results, extra = run(arrays, args.row_batch_size, args.col_batch_size, args.split_size)
  results['inputs'] = {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()}
  with open(args.output, 'w') as f:
    json.dump(results, f, indent=2)
    f.write('\n')
  if extra:
    np.savez(os.path.splitext(args.output)[0] + '.npz', **extra)
  print(json.dumps({k: v for k, v in results.items() if k not in ('inputs', 'seconds')}))


if __name__ == '__main__':
  main()
