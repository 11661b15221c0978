"""FID, Inception Score and KID with pytorch-fid's FID Inception, streaming over the mesh.

    model, variables = metrics.load_fid_inception()        # pytorch-fid's weights, downloaded once
    extractor = metrics.Extractor(model, variables, logits=True)   # one jitted step over the 'data' axis
    accumulator = metrics.Accumulator(extractor, keep_logits=True)
    for images in batches:             # NHWC, uint8 or floats in [0, 1]: a global jax.Array on the
      accumulator.update(images)       # mesh, or this process's rows as numpy
    stats = accumulator.result()       # mu, sigma (float64), num_images, logits
    fid = metrics.fid(stats, metrics.Statistics.load('reference.npz'))
    is_mean, is_std = metrics.inception_score(stats.logits)

What each number matches:
- FID: pytorch-fid 0.3.0 (`fid_score.py`): its preprocessing (PIL `convert('RGB')`, [0, 1],
  bilinear resize to 299, 2x - 1), its feature taps (`--dims` 64/192/768/2048, spatially
  averaged below 2048), mean and unbiased covariance, and the Frechet distance, here through
  `eigh` in float64 instead of scipy's `sqrtm`.
- Inception Score and KID: torch-fidelity 0.3.0's formulas and defaults (`metric_isc.py`,
  `metric_kid.py`, `defaults.py`), computed on the features of the same network pass as FID.
  IS uses torch-fidelity's 'logits_unbiased' (pool3 features times the 1008-way fc weight,
  no bias: `feature_extractor_inceptionv3.py` lines 179-182, the default
  `feature_layer_isc` of `defaults.py`); pytorch-fid's weights carry the same fc as
  torch-fidelity's (both are the 2015-12-05 TensorFlow graph). torch-fidelity feeds its
  network uint8 images resized with TF1's bilinear rule and scaled by (x - 128) / 128, so its
  own numbers differ from these slightly; the formulas are the same (tests/test_metrics.py).

Memory: the FID statistics are a count, a sum and a sum of outer products in float64 on the
host, O(d^2) whatever the number of images; IS and KID need every image's logits or features
(torch-fidelity keeps them too), kept only when asked for.

Modules: `weights` (the weight file), `sources` (folders, .npz, TFDS), `features` (the
jitted extraction step and the streamed statistics), `distances` (the formulas on
features), `calculate` (what scripts.fid runs).
"""

from inception_jax.metrics.calculate import METRICS, calculate_metrics, open_path, save_statistics
from inception_jax.metrics.distances import (
    IS_SPLITS,
    KID_SUBSET_SIZE,
    KID_SUBSETS,
    fid,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
)
from inception_jax.metrics.features import MAX_STATISTICS_DIMS, Accumulator, Extractor, Statistics, compute_statistics
from inception_jax.metrics.sources import (
    IMAGE_EXTENSIONS,
    MAX_BATCH_PIXELS,
    MAX_IMAGE_PIXELS,
    FolderImages,
    ImageSource,
    NpzImages,
    TfdsImages,
)
from inception_jax.metrics.weights import CACHE_ENV, FID_WEIGHTS_URL, fid_weights_file, load_fid_inception
