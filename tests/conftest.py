import functools
import json
import os
import pathlib
import shutil
import tempfile

import pytest

from experiments.configs import mnist_inception

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / 'shared' / 'data' / 'mnist'

# Offline machines (CI) prepare MNIST from the four IDX files beside the project.
if SHARED_MNIST.is_dir():
  os.environ.setdefault('TFDS_MANUAL_DIR', str(SHARED_MNIST))

# One persistent compilation cache per test run, shared by the pytest-xdist workers and by
# every process the tests launch (through the environment, which JAX reads when it is first
# imported, after this file): each program compiles once.
# The process that runs pytest names it; the workers and launched processes inherit the name.
COMPILATION_CACHE = os.environ.setdefault(
    'INCEPTION_JAX_TESTS_CACHE', os.path.join(tempfile.gettempdir(), f'inception_jax_tests_{os.getpid()}_jax_cache')
)
os.environ['JAX_COMPILATION_CACHE_DIR'] = COMPILATION_CACHE
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.5'


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


def metrics_lines(workdir) -> list[dict]:
  """Every line of a run's metrics.jsonl, parsed (strictly: unlike scripts.plot_metrics, a cut line fails)."""
  return [json.loads(line) for line in pathlib.Path(workdir, 'metrics.jsonl').read_text().splitlines()]


@pytest.fixture
def make_config():
  return tiny_config


def pytest_sessionfinish(session):
  if not os.environ.get('PYTEST_XDIST_WORKER'):  # the controller, after every worker
    shutil.rmtree(COMPILATION_CACHE, ignore_errors=True)
