import contextlib
import functools
import http.server
import json
import os
import pathlib
import resource
import shutil
import threading

import numpy as np
import pytest

from experiments.configs import mnist_inception

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / 'shared' / 'data' / 'mnist'

# Offline machines (CI) prepare MNIST from the four IDX files beside the project.
if SHARED_MNIST.is_dir():
  os.environ.setdefault('TFDS_MANUAL_DIR', str(SHARED_MNIST))

# One persistent compilation cache for the suite, shared by the pytest-xdist workers and by every
# process the tests launch (through the environment, which JAX reads when it is first imported,
# after this file), and kept between runs outside the clone: a rerun compiles only what changed.
# JAX keys each entry by the program, its devices and options and its own version, so a stale
# entry is never served; a run with an empty cache passes the same. Every compile is cached, the
# quick ones too; the size is bounded (least recently used entries go first), and entries are read
# and written under JAX's file lock. INCEPTION_JAX_TESTS_CACHE names another folder.
COMPILATION_CACHE = os.environ.setdefault(
    'INCEPTION_JAX_TESTS_CACHE',
    os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'),
        'inception_jax',
        'tests_jax',
    ),
)
os.environ['JAX_COMPILATION_CACHE_DIR'] = COMPILATION_CACHE
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
os.environ['JAX_COMPILATION_CACHE_MAX_SIZE'] = str(4 * 2**30)


# The tests' network and runs: narrow, short, frequent everything ({dotted field: value}).
TINY = {
    'model.widths': (4, 8),
    'model.reduce_width': 4,
    'model.hidden_units': 32,
    'global_batch_size': 32,
    'eval_batch_size': 250,
    'eval_split': 'test[:500]',
    'num_train_steps': 6,
    'warmup_steps': 2,
    'log_every_steps': 2,
    'checkpoint_every_steps': 3,
}


def tiny_config(**fields):
  """The default config with TINY's values, then `fields` (top-level)."""
  config = mnist_inception.get_config()
  for name, value in TINY.items():
    *parents, field = name.split('.')
    setattr(functools.reduce(getattr, parents, config), field, value)
  config.update(fields)
  return config


def tiny_flags(**fields):
  """TINY with `fields` ({dotted field: value}) as the experiments' --config.* flags."""
  return [f'--config.{name}={value}' for name, value in (TINY | fields).items()]


@contextlib.contextmanager
def file_size_limit(nbytes: int):
  """This process may write no file past `nbytes` (ulimit -f): a write beyond fails with EFBIG,
  as on a full disk (Python ignores SIGXFSZ). The tests run as root, where permissions fail nothing."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def metrics_lines(workdir) -> list[dict]:
  """Every line of a run's metrics.jsonl, parsed (strictly: unlike scripts.plot_metrics, a cut line fails)."""
  return [json.loads(line) for line in pathlib.Path(workdir, 'metrics.jsonl').read_text().splitlines()]


@pytest.fixture
def make_config():
  return tiny_config


def params_of(state):
  import jax

  return jax.tree.map(np.asarray, jax.device_get(state.params))


def damage(step_dir, how):
  """Damages a checkpoint's step folder the way `how` names."""
  data_files = sorted((step_dir / 'state').rglob('ocdbt.process_0/d/*'), key=lambda p: p.stat().st_size)
  if how == 'truncated':
    data_files[-1].write_bytes(data_files[-1].read_bytes()[: data_files[-1].stat().st_size // 2])
  elif how == 'overwritten':  # same size, 896 bytes in the middle
    data = bytearray(data_files[-1].read_bytes())
    middle = len(data) // 2
    data[middle : middle + 896] = np.random.default_rng(0).integers(0, 256, 896, dtype=np.uint8).tobytes()
    data_files[-1].write_bytes(bytes(data))
  elif how == 'missing_metadata':
    os.remove(step_dir / 'state' / '_METADATA')
  elif how == 'garbage_metadata':
    (step_dir / 'state' / '_METADATA').write_text('{"tree_metadata": 7')
  elif how == 'missing_meta':
    shutil.rmtree(step_dir / 'meta')
  elif how == 'empty_step_folder':
    shutil.rmtree(step_dir)
    step_dir.mkdir()
  elif how in ('meta_empty_object', 'meta_a_list', 'meta_shapes_digit', 'meta_without_checksums'):
    path = step_dir / 'meta' / 'metadata'
    meta = json.loads(path.read_text())
    if how == 'meta_shapes_digit':  # one digit of one recorded shape
      key = next(k for k, shape in meta['shapes'].items() if shape)
      meta['shapes'][key][0] += 1
    elif how == 'meta_without_checksums':
      del meta['checksums']
    path.write_text(json.dumps({'meta_empty_object': {}, 'meta_a_list': []}.get(how, meta)))
  else:
    raise ValueError(how)


@pytest.fixture(scope='session')
def finished_run(tmp_path_factory):
  """A tiny 6-step run (checkpoints at 3 and 6), to copy and damage or resume: its workdir,
  final parameters and fc1 kernel's Adam moment. One per pytest-xdist worker, shared by the
  test files: tests copy its workdir before they change anything."""
  from inception_jax import train

  workdir = tmp_path_factory.mktemp('finished')
  state, _ = train.train_and_evaluate(tiny_config(), str(workdir))
  return workdir, params_of(state), np.asarray(state.opt_state[0].mu['fc1']['kernel'])


@pytest.fixture(scope='session')
def network(tmp_path_factory):
  """pytorch-fid's FID Inception with random weights (BatchNorm statistics calibrated on images,
  so features do not vanish) in torch, the same in Flax, and as both kinds of --weights: the
  .pth state_dict and a scripts.convert_weights folder."""
  import types

  import torch
  from scripts.torch_refs import numpy_state_dict, randomize
  from scripts.torch_refs import pytorch_fid_inception as fid_ref

  from inception_jax.models import convert
  from inception_jax.models import pretrained

  torch.manual_seed(0)
  calibration = 2 * torch.nn.functional.interpolate(torch.rand(2, 3, 40, 48), size=(299, 299), mode='bilinear') - 1
  torch_network = randomize(fid_ref.fid_inception_v3(), calibration, seed=1)
  model, variables, missing, unexpected = convert.convert_state_dict(
      'inception_v3_fid', numpy_state_dict(torch_network), source='pytorch_fid'
  )
  assert missing == [] and unexpected == []
  folder = tmp_path_factory.mktemp('weights')
  torch.save(torch_network.state_dict(), folder / 'pt_inception-random.pth')
  pretrained.save_pretrained(folder / 'converted', 'inception_v3_fid', convert.model_config(model), variables)
  return types.SimpleNamespace(
      torch=torch_network,
      model=model,
      variables=variables,
      pth=str(folder / 'pt_inception-random.pth'),
      converted=str(folder / 'converted'),
  )


@functools.cache
def script_flags(module) -> tuple:
  """An absl script's own flags, taken out of absl's global FLAGS: scripts define flags of the same
  names (--model, --batch_size, --json), and the tests of several scripts share a process.
  Call it when the test module imports the script."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  own = tuple(flags.FLAGS[f.name] for f in flags.FLAGS.get_key_flags_for_module(module))
  for flag in own:
    delattr(flags.FLAGS, flag.name)
  return own


def script_runner(module):
  """`run(*args) -> exit status` of an absl script's main, its flags defined only while it runs."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  own = script_flags(module)

  def run(*args) -> int:
    for flag in own:
      flags.FLAGS[flag.name] = flag
    try:
      return module.main(flags.FLAGS([module.__name__, *map(str, args)]))
    finally:
      flags.FLAGS.unparse_flags()
      for flag in own:
        delattr(flags.FLAGS, flag.name)

  return run


@pytest.fixture
def http_server():
  """A local HTTP server of `httpd.files` ({path: (body, headers)}) at `httpd.url`: a body of
  bytes is sent whole; None announces 1000 bytes and sends 10; ... sends 10 bytes of a chunk of
  1000; a str redirects there. `httpd.requests` lists the paths asked for."""
  files, requests = {}, []

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def do_GET(self):  # pylint: disable=invalid-name
      requests.append(self.path)
      if self.path not in files:
        self.send_error(404)
        return
      body, headers = files[self.path]
      if isinstance(body, str):  # a redirect, as the Hugging Face hub's to its storage
        self.send_response(302)
        self.send_header('Location', body)
        self.send_header('Content-Length', '0')
        for name, value in headers.items():
          self.send_header(name, value)
        self.end_headers()
        return
      self.send_response(200)
      if body is Ellipsis:
        self.send_header('Transfer-Encoding', 'chunked')
      else:
        self.send_header('Content-Length', '1000' if body is None else str(len(body)))
      for name, value in headers.items():
        self.send_header(name, value)
      self.send_header('Connection', 'close')
      self.end_headers()
      self.wfile.write(b'3e8\r\n' + b'x' * 10 if body is Ellipsis else b'x' * 10 if body is None else body)
      self.close_connection = True

    def log_message(self, *args):
      pass

  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
  thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
  thread.start()
  httpd.files, httpd.requests = files, requests
  httpd.url = f'http://127.0.0.1:{httpd.server_address[1]}'
  yield httpd
  httpd.shutdown()
  httpd.server_close()
