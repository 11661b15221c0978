"""Bad inputs of FID (issue #22, finding 6): images over the pixel budgets, FIFOs, damaged or
crafted .npz files, interrupted downloads, broken statistics. Each ends in a result or a
one-line ValueError (what scripts.fid prints as `error: ...`), and no file makes the reader
allocate more than it declares and a budget allows; a fuzz test of the .npz reader checks
both on 10,000 mutated files."""

import io
import json
import math
import os
import pathlib
import re
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import types
import warnings
import zipfile
import zlib

import numpy as np
import pytest

from inception_jax import metrics, parallel

ROOT = pathlib.Path(__file__).resolve().parents[1]


def one_line_error(call, match: str) -> str:
  with pytest.raises(ValueError, match=match) as error:
    call()
  assert '\n' not in str(error.value), str(error.value)
  return str(error.value)


def png(path: pathlib.Path, width: int, height: int) -> pathlib.Path:
  """A PNG that declares `width` x `height` RGB pixels but holds a few: PIL reads its size without decoding."""

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

  path.parent.mkdir(parents=True, exist_ok=True)
  header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  path.write_bytes(
      b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(bytes(64))) + chunk(b'IEND', b'')
  )
  return path


def npy(array, version=None) -> bytes:
  f = io.BytesIO()
  np.lib.format.write_array(f, np.asarray(array), version=version, allow_pickle=False)
  return f.getvalue()


def npy_header(shape, descr: str = '|u1') -> bytes:
  f = io.BytesIO()
  np.lib.format.write_array_header_1_0(f, {'descr': descr, 'fortran_order': False, 'shape': shape})
  return f.getvalue()


def zip_bytes(members: dict[str, bytes], compress: bool = True, sizes: dict[str, int] | None = None) -> bytes:
  """An .npz of raw members; `sizes` overrides the uncompressed sizes the central directory gives
  (a bomb's directory: a member that says it holds more than it does)."""
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
    for name, data in members.items():
      z.writestr(name, data)
  data = bytearray(buffer.getvalue())
  for name, size in (sizes or {}).items():
    entry = data.index(b'PK\x01\x02')
    while data[entry + 46 : entry + 46 + len(name)] != name.encode():
      entry = data.index(b'PK\x01\x02', entry + 1)
    struct.pack_into('<I', data, entry + 24, size)
  return bytes(data)


# Pixel budgets.


def test_an_image_over_the_pixel_budget_is_refused_from_its_header(tmp_path):
  # 13,000^2 pixels decode to 507 MB from a 0.5 MB PNG; PIL only warns below 179 M pixels.
  png(tmp_path / 'huge' / '0.png', 13_000, 13_000)
  png(tmp_path / 'huge' / '1.png', 13_000, 13_000)
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # nor PIL's DecompressionBombWarning
    one_line_error(
        lambda: metrics.open_path(str(tmp_path / 'huge')),
        r'huge: images of 13000x13000 pixels are over the budget of 33,554,432 pixels per image',
    )
  # The same images as an .npz's arr_0 (its directory agreeing with its header), refused from the header.
  header = npy_header((2, 13_000, 13_000, 3))
  (tmp_path / 'huge.npz').write_bytes(
      zip_bytes({'arr_0.npy': header}, sizes={'arr_0.npy': len(header) + 2 * 13_000**2 * 3})
  )
  one_line_error(lambda: metrics.open_path(str(tmp_path / 'huge.npz')), r'images of 13000x13000 pixels are over')


def test_a_batch_over_the_pixel_budget_is_refused_before_any_work(tmp_path):
  # 50 images of 2048^2 are 210 M pixels: 629 MB decoded, 2.5 GB as floats on the devices.
  for i in range(50):
    png(tmp_path / 'big' / f'{i:02d}.png', 2048, 2048)
  message = (
      r'a batch of 50 images of 2048x2048 pixels is 209,715,200 pixels, over the budget .* --batch_size=32 or less'
  )
  paths = [str(tmp_path / 'big')] * 2
  one_line_error(lambda: metrics.calculate_metrics(paths, weights=str(tmp_path / 'absent.pth')), message)
  # compute_statistics itself, for sources made in Python.
  source = metrics.open_path(paths[0])
  extractor = types.SimpleNamespace(mesh=parallel.make_mesh(1), dims=2048, logits=False)
  one_line_error(lambda: metrics.compute_statistics(source, extractor, batch_size=50), message)


# Only regular files.


@pytest.mark.parametrize('name', ['images/x.png', 'x.npz'])
def test_a_fifo_is_refused_not_waited_on(tmp_path, name):
  fifo = tmp_path / name
  if name.endswith('.png'):
    png(tmp_path / 'images' / 'a.png', 8, 8)
  os.mkfifo(fifo)
  outcome = {}

  def run():
    try:
      metrics.open_path(str(fifo if name.endswith('.npz') else fifo.parent))
    except Exception as e:  # pylint: disable=broad-except
      outcome['error'] = e

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(10)
  if thread.is_alive():  # blocked in open(): a writer that opens and closes lets it go
    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    thread.join(10)
    pytest.fail(f'open_path blocked on the FIFO {name}')
  error = outcome.get('error')
  assert isinstance(error, ValueError) and '\n' not in str(error), repr(error)
  assert re.search(rf'{re.escape(name)} is not a regular file \(a FIFO\)', str(error)), str(error)


# .npz files np.savez did not write quite so.


def test_npz_members_in_npy_format_3_or_without_the_npy_suffix_are_read(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 3), np.uint8)
  mu, sigma = np.arange(3.0), np.eye(3)
  for version, suffix in (((3, 0), '.npy'), ((1, 0), ''), ((2, 0), '')):
    (tmp_path / 'images.npz').write_bytes(zip_bytes({f'arr_0{suffix}': npy(images, version)}))
    np.testing.assert_array_equal(metrics.open_path(str(tmp_path / 'images.npz')).read(0, 3), images)
    stats = {f'{k}{suffix}': npy(v, version) for k, v in (('mu', mu), ('sigma', sigma), ('num_images', np.int64(7)))}
    (tmp_path / 'stats.npz').write_bytes(zip_bytes(stats))
    loaded = metrics.open_path(str(tmp_path / 'stats.npz'))
    assert (loaded.mu.tolist(), loaded.sigma.tolist(), loaded.num_images) == (mu.tolist(), sigma.tolist(), 7)


def test_statistics_whose_num_images_is_not_one_count_are_refused(tmp_path):
  np.savez(tmp_path / 'stats.npz', mu=np.zeros(3), sigma=np.eye(3), num_images=np.array([5, 6]))
  one_line_error(
      lambda: metrics.open_path(str(tmp_path / 'stats.npz')),
      r'stats\.npz: num_images is int64 of shape \(2,\), not a count',
  )


MU_20K, SIGMA_20K = npy_header((20_000,), '<f8'), npy_header((20_000, 20_000), '<f8')


@pytest.mark.parametrize(
    'members, sizes, method, message',
    [
        # An 80 GB sigma declared in a member of a few bytes: np.load raises MemoryError.
        ({'mu.npy': npy(np.zeros(4)), 'sigma.npy': npy_header((100_000, 100_000), '<f8')}, None, 8, 'declares'),
        # 512 MB declared (within the budget) in a member of a few bytes: np.load allocates it, then fails.
        (
            {'mu.npy': npy(np.zeros(8192)), 'sigma.npy': npy_header((8192, 8192), '<f8') + bytes(64)},
            None,
            8,
            'declares',
        ),
        # More data than the header declares.
        ({'mu.npy': npy(np.zeros(2)) + bytes(1000), 'sigma.npy': npy(np.eye(2))}, None, 0, 'declares'),
        # A bomb: 3.2 GB declared by the header and the zip directory alike, over the budget of dimensions.
        (
            {'mu.npy': MU_20K, 'sigma.npy': SIGMA_20K},
            {'mu.npy': len(MU_20K) + 160_000, 'sigma.npy': len(SIGMA_20K) + 3_200_000_000},
            8,
            r'20000-d statistics, not between 1 and the budget of 8192 dimensions',
        ),
        # Compressed by a method whose decompressor zipfile runs without an output bound (bzip2).
        ({'mu.npy': npy(np.zeros(2)), 'sigma.npy': npy(np.eye(2))}, None, 12, r"'mu.npy' is compressed with method 12"),
    ],
)
def test_npz_members_are_checked_against_their_size_and_budget_before_decompressing(
    tmp_path, members, sizes, method, message
):
  path = tmp_path / 'stats.npz'
  if method == zipfile.ZIP_BZIP2:
    with zipfile.ZipFile(path, 'w', method) as z:
      for name, data in members.items():
        z.writestr(name, data)
  else:
    path.write_bytes(zip_bytes(members, method == zipfile.ZIP_DEFLATED, sizes))
  tracemalloc.start()
  try:
    one_line_error(lambda: metrics.open_path(str(path)), rf'stats\.npz.*{message}')
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 2**24, f'{peak / 2**20:.0f} MiB allocated'


# Weights downloads.


@pytest.mark.parametrize('kind', ['length', 'chunked'])
def test_an_interrupted_download_keeps_nothing_and_is_one_line(http_server, tmp_path, monkeypatch, kind):
  monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
  http_server.files[f'/{kind}/weights.pth'] = (None if kind == 'length' else ..., {})  # 10 bytes of 1000
  url = f'{http_server.url}/{kind}/weights.pth'  # no sha256 prefix in the name: only the length tells
  message = one_line_error(
      lambda: metrics.fid_weights_file(str(tmp_path / 'cache'), url), r'could not download weights\.pth from'
  )
  assert url in message and 'interrupted' in message and '--weights=PATH/weights.pth' in message, message
  assert os.listdir(tmp_path / 'cache') == []  # no partial file


def test_a_cache_folder_that_cannot_be_made_is_one_line(tmp_path, monkeypatch):
  # Root may write anywhere: the cache folder's parent is a regular file instead.
  monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
  (tmp_path / 'file').write_text('')
  monkeypatch.setenv(metrics.CACHE_ENV, str(tmp_path / 'file' / 'cache'))
  message = one_line_error(
      lambda: metrics.fid_weights_file(url='http://127.0.0.1:9/weights.pth'),
      r'cannot make the cache folder \S*file/cache .*: set \$INCEPTION_JAX_CACHE',
  )
  assert '--weights=PATH/weights.pth' in message


# Statistics and the distance.


@pytest.mark.parametrize(
    'mu, sigma, message',
    [
        ([0, 0], [[1, 0.5], [0, 1]], r'sigma is not symmetric'),
        ([0, 0], [[1, 0], [0, np.nan]], r'mu or sigma holds NaN or infinity'),
        ([0, np.inf], [[1, 0], [0, 1]], r'mu or sigma holds NaN or infinity'),
    ],
)
def test_statistics_with_a_broken_sigma_or_mu_are_refused(tmp_path, mu, sigma, message):
  np.savez(tmp_path / 'stats.npz', mu=np.array(mu, float), sigma=np.array(sigma, float))
  one_line_error(lambda: metrics.Statistics.load(str(tmp_path / 'stats.npz')), rf'^\S*stats\.npz: {message}')


def test_a_frechet_distance_that_is_not_finite_is_refused():
  one_line_error(
      lambda: metrics.frechet_distance(np.full(2, 1e200), np.eye(2), np.zeros(2), np.eye(2)),
      r'the Fréchet distance is inf',
  )


# Fuzz: mutated .npz files of images and of statistics, stored and compressed.

FUZZ_SEED, FUZZ_FILES = 622, 10_000
FUZZ_HEADROOM = 256 * 2**20  # address space a worker may add to what it holds after its imports


def fuzz_seeds() -> list[dict[str, bytes]]:
  rng = np.random.default_rng(0)
  features = rng.normal(size=(10, 4))
  mu, sigma = features.mean(axis=0), np.cov(features, rowvar=False)
  return [
      {'arr_0.npy': npy(rng.integers(0, 256, (3, 4, 5, 3), np.uint8))},
      {'arr_0.npy': npy(rng.integers(0, 256, (2, 6, 3, 1), np.uint8), (2, 0))},
      {'mu.npy': npy(mu), 'sigma.npy': npy(sigma), 'num_images.npy': npy(np.int64(10))},
      {'mu.npy': npy(mu.astype(np.float32), (3, 0)), 'sigma.npy': npy(sigma)},
  ]


NUMBERS = [0, 1, 2, 3, 4, 5, 8, 255, 2**16, 2**31, 2**32 + 3, 2**63, 10**30, -1]
DESCRS = ['|u1', '<f8', '>f8', '<f4', '<i8', '|b1', '<c16', '|O', '<U3', '|S0', '|V0', '<M8[s]', [('a', '<f8')],
          [('a', '|O')], [('a\nb', '<f8')], [('a', '<f8', (10**9,))], 7, None]  # fmt: skip


def mutate_header(rng, member: bytes) -> bytes:
  """`member` with one field of its .npy header's text replaced, its header length rewritten."""
  start = 10 if member[6] == 1 else 12  # the header's length: 2 bytes in format 1.0, 4 after
  end = start + int.from_bytes(member[8:start], 'little')
  text = member[start:end].decode('latin1')
  shape = tuple(NUMBERS[rng.integers(len(NUMBERS))] for _ in range(rng.integers(0, 5)))
  field = [
      ('shape', repr(shape)),
      ('descr', repr(DESCRS[rng.integers(len(DESCRS))])),
      ('fortran_order', repr([True, 1, 'x'][rng.integers(3)])),
      ('shape', '(' * 300 + ')' * 300),
  ][rng.integers(4)]
  text = re.sub(rf"'{field[0]}': ('[^']*'|\([^)]*\)|\[.*?\]|True|False)", lambda _: f"'{field[0]}': {field[1]}", text)
  if rng.random() < 0.1:
    text = text.replace("'descr'", "'fortran'")  # a key missing, another unknown
  header = text.encode('latin1')
  return member[:8] + (len(header) % 2 ** (8 * start - 64)).to_bytes(start - 8, 'little') + header + member[end:]


def mutate_bytes(rng, data: bytes, near: int) -> bytes:
  """One of: bytes overwritten (mostly in the first `near` bytes), cut, inserted or repeated."""
  data = bytearray(data)
  kind = rng.integers(5)
  if kind == 0:
    for _ in range(rng.integers(1, 9)):
      position = rng.integers(min(near, len(data)) if rng.random() < 0.7 else len(data))
      data[position] = rng.integers(256)
  elif kind == 1:
    del data[rng.integers(len(data)) :]
  elif kind == 2:
    position = rng.integers(len(data) + 1)
    data[position:position] = rng.integers(0, 256, rng.integers(1, 64), np.uint8).tobytes()
  elif kind == 3:
    start = rng.integers(len(data))
    data[start:start] = data[start : start + rng.integers(1, 256)] * int(rng.integers(1, 4))
  else:
    position = rng.integers(len(data))
    data[position] ^= 1 << int(rng.integers(8))
  return bytes(data)


def mutate_directory(rng, data: bytes) -> bytes:
  """A field of a central directory entry replaced: sizes, method, flags, offset."""
  data = bytearray(data)
  entries = [m.start() for m in re.finditer(b'PK\x01\x02', data)]
  if not entries:
    return mutate_bytes(rng, data, len(data))
  entry = int(rng.choice(entries))
  offset, size = [(20, 4), (24, 4), (10, 2), (8, 2), (42, 4), (28, 2)][rng.integers(6)]
  value = [0, 1, 7, 8, 12, 14, 99, 100, 2**15, 2**16 - 1, 2**31, 2**32 - 1][rng.integers(12)]
  data[entry + offset : entry + offset + size] = (value % 256**size).to_bytes(size, 'little')
  return bytes(data)


def fuzz_file(rng, seeds) -> bytes:
  members = dict(seeds[rng.integers(len(seeds))])
  compress = bool(rng.integers(2))
  kind = rng.integers(4)
  if kind == 0:  # a member's .npy header text
    name = list(members)[rng.integers(len(members))]
    members[name] = mutate_header(rng, members[name])
  elif kind == 1:  # a member's bytes, the zip around them intact
    name = list(members)[rng.integers(len(members))]
    members[name] = mutate_bytes(rng, members[name], 128)
  data = zip_bytes(members, compress)
  if kind == 2:  # the archive's bytes
    data = mutate_bytes(rng, data, len(data))
  elif kind == 3:  # its directory
    data = mutate_directory(rng, data)
  return data


def fuzz_worker(folder: str, seed: int, files: int) -> None:
  """Reads `files` mutated .npz files through open_path (and every image of an .npz of images)
  under an address-space limit; prints the counts, time and peak memory as JSON."""
  import resource  # pylint: disable=g-import-not-at-top

  rng, seeds, path = np.random.default_rng(seed), fuzz_seeds(), os.path.join(folder, 'fuzz.npz')
  with open('/proc/self/status') as f:
    address_space = int(re.search(r'VmSize:\s+(\d+) kB', f.read()).group(1)) * 1024
  resource.setrlimit(resource.RLIMIT_AS, (address_space + FUZZ_HEADROOM, resource.getrlimit(resource.RLIMIT_AS)[1]))
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  outcomes, start, fd = {'result': 0, 'error': 0}, time.perf_counter(), os.open(path, os.O_WRONLY | os.O_CREAT)
  for i in range(files):
    data = fuzz_file(rng, seeds)
    os.pwrite(fd, data, 0)  # the same file rewritten: much faster than a new one on ext4
    os.ftruncate(fd, len(data))
    try:
      source = metrics.open_path(path)
      if isinstance(source, metrics.NpzImages):  # every image, about a MiB at a time
        step = max(1, 2**20 // math.prod(source.image_shape))
        for first in range(0, source.num_images, step):
          source.read(first, min(first + step, source.num_images))
      outcomes['result'] += 1
    except ValueError as e:
      if '\n' in str(e):
        raise AssertionError(f'file {i} of seed {seed}: an error of several lines: {e!r}') from None
      outcomes['error'] += 1
    except BaseException as e:  # pylint: disable=broad-except
      raise AssertionError(f'file {i} of seed {seed}: {type(e).__name__}: {e}') from e
  os.close(fd)
  print(
      json.dumps(
          {
              **outcomes,
              'seconds': time.perf_counter() - start,
              'address_space_limit_mib': (address_space + FUZZ_HEADROOM) / 2**20,
              'peak_rss_before_mib': rss_before / 2**20,
              'peak_rss_after_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
          }
      )
  )


def test_fuzz_npz_reader_ends_in_a_result_or_one_line_within_bounded_memory(tmp_path):
  """Measured on 2 shared cores: the 10,000 files read in 3 to 5 s (2.5 s more for the worker's
  imports), about 1,100 results and 8,900 one-line errors; the worker's peak RSS 297 MiB
  before and after them (no growth), under an address-space limit of its size after imports
  plus 256 MiB. With tracemalloc (outside the test, 10x slower) the most one file made the
  reader allocate was 110 kB. np.load in open_path's place fails at file 1 (MemoryError:
  8 GiB declared)."""
  script = (
      f'import sys; sys.path.insert(0, {str(ROOT / "tests")!r}); import test_metrics_inputs as t; '
      f't.fuzz_worker({str(tmp_path)!r}, {FUZZ_SEED}, {FUZZ_FILES})'
  )
  run = subprocess.run(
      [sys.executable, '-c', script],
      capture_output=True,
      text=True,
      cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=str(ROOT)),
  )
  assert run.returncode == 0, run.stderr[-3000:]
  report = json.loads(run.stdout.splitlines()[-1])
  print('fuzz:', report)
  assert report['result'] + report['error'] == FUZZ_FILES and report['result'] > 100 and report['error'] > 100, report
  assert report['peak_rss_after_mib'] - report['peak_rss_before_mib'] < 64, report


def test_an_image_of_more_than_8_bits_is_read_as_pytorch_fid_reads_it_and_said_once(tmp_path, caplog, monkeypatch):
  # Issue 30, finding 15: 16-bit PNGs are clipped to near-white, as pytorch-fid's convert('RGB') does,
  # and FID came out at 4.5e7 without a word.
  from PIL import Image  # pylint: disable=g-import-not-at-top

  from inception_jax.metrics import sources  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(sources, '_WARNED', set())
  for i in range(2):
    Image.fromarray(np.full((4, 5), 1000 * (i + 1), np.uint16)).save(tmp_path / f'{i}.png')
  pixels = [sources.read_image(tmp_path / f'{i}.png') for i in range(2)]
  assert all(p.shape == (4, 5, 3) and (p == 255).all() for p in pixels)  # pytorch-fid's clipping, kept
  warned = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert len(warned) == 1 and re.search(r'0\.png is a 16-bit image \(mode I;16\).*clips', warned[0]), warned
