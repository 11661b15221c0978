"""FID (pytorch-fid), Inception Score and KID (torch-fidelity), the ADM evaluator's row and
clean-fid's FID between two sets of images: PATH1 the samples, PATH2 the reference.

    python -m scripts.fid PATH1 PATH2 --weights=pt_inception-2015-12-05-6726825d.pth
    python -m scripts.fid PATH1 PATH2 --metrics=fid,is,kid --json      # IS of PATH1; KID needs images on both sides
    python -m scripts.fid SAMPLES.npz REF.npz --suite=adm              # IS, FID, sFID, precision, recall as ADM prints them
    python -m scripts.fid DIR1 DIR2 --preprocess=clean --metrics=fid,kid   # clean-fid's 'clean' mode
    python -m scripts.fid --save_stats PATH OUT.npz                    # pytorch-fid's --save-stats
    python -m scripts.fid --save_stats REF_IMAGES REF.npz --suite=adm  # a reference batch in ADM's format
    python -m scripts.fid --benchmark [--batch_size=50] [--benchmark_image_size=256] [--benchmark_sizes=1000,4000]

A PATH is a folder of images (read as pytorch-fid reads them), an .npz of statistics (mu,
sigma) or of images (arr_0, NHWC uint8; an ADM reference batch holds both), or
tfds:NAME[:SPLIT]. --preprocess picks the tool whose preprocessing to match: pytorch_fid
(default), tf1 (the ADM evaluator, TTUR, torch-fidelity) or clean (clean-fid); statistics files
record it, and two made differently are not compared. --weights takes pytorch-fid's
weight file or a folder from scripts.convert_weights; without it, pytorch-fid's file is
downloaded once (sha256-checked) into ~/.cache/inception_jax ($INCEPTION_JAX_CACHE). Errors in
the input are one line on stderr and exit status 1: among them images over 33.5 M pixels or
batches over 134 M (metrics.MAX_IMAGE_PIXELS, MAX_BATCH_PIXELS; a smaller --batch_size fits),
anything but a regular file, and .npz files whose members are not what their headers declare.
With --json the last line of stdout is one JSON object.

--benchmark prints JSON lines: feature extraction images/s of the jitted step against
pytorch-fid's network in PyTorch eager (scripts/torch_refs; needs the test extra), the same
weights and the same uint8 batch, steps alternating; then the peak host memory after
streaming N synthetic images through the whole pipeline, for each N of --benchmark_sizes.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags

from inception_jax import compilation_cache, metrics, parallel, torch_files
from inception_jax.models import convert

_WEIGHTS = flags.DEFINE_string(
    'weights',
    None,
    "pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or a folder "
    'from scripts.convert_weights; default: download it once.',
)
_BATCH = flags.DEFINE_integer('batch_size', 50, 'Images per step over all devices (rounded up to a multiple of them).')
_DIMS = flags.DEFINE_enum('dims', '2048', ['64', '192', '768', '2048'], "pytorch-fid's feature taps.")
_METRICS = flags.DEFINE_list(
    'metrics', ['fid'], 'Any of fid, sfid, is (of PATH1), kid, pr (precision and recall of PATH1 against PATH2).'
)
_SUITE = flags.DEFINE_enum(
    'suite', None, ['adm'], "adm: guided-diffusion's evaluator: its IS, FID, sFID, precision, recall (tf1)."
)
_PREPROCESS = flags.DEFINE_enum(
    'preprocess', None, list(metrics.PREPROCESSING), 'Whose preprocessing: pytorch_fid (default), tf1, clean.'
)
_PR_BLOCK = flags.DEFINE_integer('pr_block_size', None, 'Precision/recall: rows and columns per distance block.')
_JSON = flags.DEFINE_bool('json', False, 'Print the metrics as one JSON object.')
_SAVE_STATS = flags.DEFINE_bool('save_stats', False, "Write the statistics of PATH to OUT.npz (pytorch-fid's format).")
_IS_SPLITS = flags.DEFINE_integer('is_splits', metrics.IS_SPLITS, 'Inception Score splits (torch-fidelity: 10).')
_KID_SUBSETS = flags.DEFINE_integer('kid_subsets', metrics.KID_SUBSETS, 'KID subsets (torch-fidelity: 100).')
_KID_SUBSET_SIZE = flags.DEFINE_integer(
    'kid_subset_size', metrics.KID_SUBSET_SIZE, 'Images per KID subset (torch-fidelity: 1000).'
)
_COMPILATION_CACHE = flags.DEFINE_string(
    'compilation_cache_dir',
    compilation_cache.AUTO,
    "Compiled programs kept for the next run: 'auto' is $JAX_COMPILATION_CACHE_DIR, else "
    "~/.cache/inception_jax/jax; '' turns it off.",
)
_NUM_DEVICES = flags.DEFINE_integer('num_devices', -1, 'Devices of the mesh; -1: all.')
_BENCHMARK = flags.DEFINE_bool('benchmark', False, 'Time extraction against PyTorch and measure memory over N.')
_BENCHMARK_IMAGE_SIZE = flags.DEFINE_integer('benchmark_image_size', 256, '--benchmark: image height and width.')
_BENCHMARK_STEPS = flags.DEFINE_integer('benchmark_steps', 5, '--benchmark: timed steps of each framework.')
_BENCHMARK_SIZES = flags.DEFINE_list(
    'benchmark_sizes', ['500', '1000', '2000'], '--benchmark: numbers of images streamed, for the memory check.'
)


def main(argv) -> int:
  paths = argv[1:]
  options = dict(
      weights=_WEIGHTS.value,
      batch_size=_BATCH.value,
      dims=int(_DIMS.value),
      num_devices=_NUM_DEVICES.value,
      suite=_SUITE.value,
      preprocess=_PREPROCESS.value,
  )
  compilation_cache.enable(_COMPILATION_CACHE.value)
  try:
    if _SUITE.value and flags.FLAGS['metrics'].present:
      raise ValueError(f'--suite={_SUITE.value} computes its own metrics; drop --metrics (or --suite).')
    if _BENCHMARK.value:
      for line in benchmark(
          _BATCH.value,
          _BENCHMARK_IMAGE_SIZE.value,
          _BENCHMARK_STEPS.value,
          [int(n) for n in _BENCHMARK_SIZES.value],
          weights=_WEIGHTS.value,
          dims=int(_DIMS.value),
      ):
        print(json.dumps(line), flush=True)
      return 0
    if _SAVE_STATS.value:
      if len(paths) != 2:
        raise ValueError(f'--save_stats takes PATH and OUT.npz, got {len(paths)} path(s).')
      stats = metrics.save_statistics(*paths, progress=True, **options)
      what = 'images and statistics' if _SUITE.value else 'statistics'
      print(f'wrote {paths[1]}: {what} of {stats.num_images} images, {stats.dims}-d, --preprocess={stats.preprocess}')
      return 0
    result = metrics.calculate_metrics(
        paths,
        metrics=tuple(_METRICS.value),
        is_splits=_IS_SPLITS.value,
        kid_subsets=_KID_SUBSETS.value,
        kid_subset_size=_KID_SUBSET_SIZE.value,
        pr_block_size=_PR_BLOCK.value,
        progress=True,
        **options,
    )
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  if _JSON.value:
    print(json.dumps(result))
  else:
    names = {  # the ADM evaluator's words (evaluator.py L52-63), in its order
        'inception_score': 'Inception Score',
        'fid': 'FID',
        'sfid': 'sFID',
        'precision': 'Precision',
        'recall': 'Recall',
        'inception_score_mean': 'Inception Score',
        'inception_score_std': 'Inception Score std',
        'kid_mean': 'KID',
        'kid_std': 'KID std',
        'num_images_1': 'images (1)',
        'num_images_2': 'images (2)',
        'preprocess': 'preprocess',
    }
    for key, value in result.items():
      print(f'{names[key]}: {value}')
  return 0


# --benchmark


class SyntheticImages:
  """Random uint8 images made a batch at a time (a function of the position): memory stays flat."""

  def __init__(self, num_images: int, size: int):
    self.name, self.num_images, self.image_shape = f'synthetic {num_images}', num_images, (size, size, 3)

  def read(self, start: int, stop: int) -> np.ndarray:
    return np.random.default_rng(start).integers(0, 256, (stop - start, *self.image_shape), np.uint8)


def _rss_gb() -> tuple[float, float]:
  """(current, peak) resident memory of this process."""
  with open('/proc/self/statm') as f:
    current = int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
  return current / 2**30, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _torch():
  import torch  # pylint: disable=g-import-not-at-top  (the test extra)

  from scripts.torch_refs import numpy_state_dict, pytorch_fid_inception, randomize  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count())
  return torch, pytorch_fid_inception, numpy_state_dict, randomize


def benchmark(
    batch_size: int, image_size: int, steps: int, sizes: list[int], *, weights: str | None = None, dims: int = 2048
) -> list[dict]:
  """Extraction images/s, JAX against pytorch-fid's network in torch; then peak memory over N."""
  try:
    torch, fid_ref, numpy_state_dict, randomize = _torch()
  except ImportError as e:
    raise ValueError(f'--benchmark needs torch (pip install -e ".[test]"): {e}') from None
  network = fid_ref.fid_inception_v3()
  if weights and os.path.isfile(weights):
    network.load_state_dict({k: torch.from_numpy(v) for k, v in torch_files.load_state_dict(weights).items()})
    network.eval()
  else:  # speed does not depend on the values: random weights, BatchNorm statistics calibrated
    torch.manual_seed(0)
    network = randomize(network, torch.rand(2, 3, 299, 299) * 2 - 1)
  model, variables, _, _ = convert.convert_state_dict(
      'inception_v3_fid', numpy_state_dict(network), source='pytorch_fid'
  )
  block = {64: 0, 192: 1, 768: 2, 2048: 3}[dims]
  torch_extractor = fid_ref.InceptionV3(network, output_blocks=(block,)).eval()
  extractor = metrics.Extractor(model, variables, dims=dims, mesh=parallel.make_mesh())
  devices = extractor.mesh.devices.size
  batch_size = -(-batch_size // devices) * devices
  images = np.random.default_rng(0).integers(0, 256, (batch_size, image_size, image_size, 3), np.uint8)

  def jax_step():  # host uint8 batch in, features back on the host, as compute_statistics runs it
    out = extractor(parallel.shard_batch({'x': images}, extractor.mesh)['x'], batch_size)
    return np.asarray(out['features'])

  def torch_step():  # pytorch-fid's get_activations on a batch its DataLoader made ([0, 1] floats)
    with torch.inference_mode():
      batch = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
      return torch_extractor(batch)[0].squeeze(3).squeeze(2).numpy()

  start = time.perf_counter()
  jax_step()
  compile_seconds = time.perf_counter() - start
  torch_step()
  times = {'jax': [], 'torch': []}
  for i in range(steps):  # alternating, the order reversed every other round
    for name in (('jax', 'torch') if i % 2 == 0 else ('torch', 'jax')):
      start = time.perf_counter()
      (jax_step if name == 'jax' else torch_step)()
      times[name].append(time.perf_counter() - start)
  rate = {name: batch_size / statistics.median(t) for name, t in times.items()}
  lines = [
      {
          'mode': 'extraction',
          'batch_size': batch_size,
          'image_size': image_size,
          'dims': dims,
          'dtype': 'float32',
          'device_kind': jax.devices()[0].device_kind,
          'device_count': devices,
          'torch_version': torch.__version__,
          'torch_threads': torch.get_num_threads(),
          'compile_seconds': compile_seconds,
          'images_per_sec': rate['jax'],
          'torch_images_per_sec': rate['torch'],
          'speedup': rate['jax'] / rate['torch'],
          'step_ms_all': [round(1e3 * t, 1) for t in times['jax']],
          'torch_step_ms_all': [round(1e3 * t, 1) for t in times['torch']],
      }
  ]
  del torch_extractor, network
  for n in sizes:  # the whole pipeline (reader thread, step, float64 statistics): memory must not grow with n
    start = time.perf_counter()
    stats = metrics.compute_statistics(SyntheticImages(n, image_size), extractor, batch_size=batch_size)
    seconds = time.perf_counter() - start
    current, peak = _rss_gb()
    lines.append(
        {
            'mode': 'memory',
            'num_images': stats.num_images,
            'images_per_sec': n / seconds,
            'rss_gb': current,
            'peak_rss_gb': peak,
        }
    )
  return lines


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)))
