"""FID, sFID, Inception Score, KID, precision and recall with the 2015 FID Inception, streaming
over the mesh, matching the tools papers report from.

    model, variables = metrics.load_fid_inception()        # pytorch-fid's weights, downloaded once
    extractor = metrics.Extractor(model, variables, logits=True)   # one jitted step over the 'data' axis
    accumulator = metrics.Accumulator(extractor, keep_logits=True)
    for images in batches:             # NHWC, uint8 or floats in [0, 1]: a global jax.Array on the
      accumulator.update(images)       # mesh, or this process's rows as numpy
    stats = accumulator.result()       # mu, sigma (float64), num_images, logits
    fid = metrics.fid(stats, metrics.Statistics.load('reference.npz'))
    is_mean, is_std = metrics.inception_score(stats.logits)

    # The ADM evaluator's row: tf1 preprocessing, sFID's spatial features, every image's pool3 features.
    extractor = metrics.Extractor(model, variables, logits=True, spatial=True, preprocess='tf1')
    ...                                # accumulate samples and reference with keep_features=True
    metrics.inception_score_adm(samples.logits), metrics.fid(samples, ref), metrics.sfid(samples, ref)
    precision, recall = metrics.precision_recall(ref.features, samples.features)

The weights are the same in every tool (the 2015-12-05 TensorFlow graph); what each matches:
- preprocess='pytorch_fid' (default): pytorch-fid 0.3.0 (`fid_score.py`): PIL `convert('RGB')`,
  [0, 1], half-pixel bilinear resize to 299, 2x - 1; its feature taps (`--dims` 64/192/768/2048,
  spatially averaged below 2048), mean and unbiased covariance, and the Frechet distance, here
  through `eigh` in float64 instead of scipy's `sqrtm`.
- preprocess='tf1': the ADM evaluator (guided-diffusion `evaluations/evaluator.py`), the original
  TTUR code and torch-fidelity: TensorFlow 1's bilinear resize (no half-pixel centres), then
  (x - 128) / 128. With it, `inception_score_adm`, `sfid` and `precision_recall` are the
  evaluator's; `calculate_metrics(suite='adm')` computes its whole row.
- preprocess='clean': clean-fid's 'clean' mode: PIL bicubic on each channel as a float image, on
  the host, then (x - 128) / 128.
- Inception Score and KID: torch-fidelity 0.3.0's formulas and defaults (`metric_isc.py`,
  `metric_kid.py`, `defaults.py`), on the logits (pool3 times the 1008-way fc weight, no bias,
  torch-fidelity's 'logits_unbiased') and features of the same network pass as FID.
The measured agreement with each tool is in docs/metrics.md; every contraction runs at full
float32 precision on every backend.

Memory: FID and sFID statistics are a count, a sum and a sum of outer products in float64 on
the host, O(d^2) whatever the number of images; IS, KID and precision/recall need every image's
logits or features (the reference tools keep them too), kept only when asked for; precision
and recall work through blocks of distances, never the whole N x N matrix.

Modules: `weights` (the weight file), `sources` (folders, .npz, TFDS), `preprocessing` (the
three tools' resizes), `features` (the jitted extraction step and the streamed statistics),
`distances` (FD, IS, KID on features), `manifold` (precision and recall), `calculate` (what
scripts.fid runs).
"""

from inception_jax.metrics.calculate import ADM_METRICS, METRICS, calculate_metrics, open_path, save_statistics
from inception_jax.metrics.distances import (
    ADM_IS_SPLIT_SIZE,
    IS_SPLITS,
    KID_COEF0,
    KID_DEGREE,
    KID_SUBSET_SIZE,
    KID_SUBSETS,
    SEED,
    fid,
    frechet_distance,
    inception_score,
    inception_score_adm,
    kernel_inception_distance,
    sfid,
)
from inception_jax.metrics.features import (
    MAX_STATISTICS_DIMS,
    SPATIAL_DIMS,
    Accumulator,
    Extractor,
    Statistics,
    compute_statistics,
)
from inception_jax.metrics.manifold import manifold_radii, precision_recall
from inception_jax.metrics.preprocessing import PREPROCESSING
from inception_jax.metrics.sources import (
    IMAGE_EXTENSIONS,
    MAX_BATCH_PIXELS,
    MAX_IMAGE_PIXELS,
    FolderImages,
    ImageSource,
    NpzImages,
    TfdsImages,
    save_npz_images,
)
from inception_jax.metrics.weights import CACHE_ENV, FID_WEIGHTS_URL, fid_weights_file, load_fid_inception
