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


def tiny_config(**fields):
  """The default config with a narrow network and short, frequent everything."""
  config = mnist_inception.get_config()
  config.model.widths = (4, 8)
  config.model.reduce_width = 4
  config.model.hidden_units = 32
  config.global_batch_size = 32
  config.eval_batch_size = 250
  config.eval_split = 'test[:500]'
  config.num_train_steps = 6
  config.warmup_steps = 2
  config.log_every_steps = 2
  config.checkpoint_every_steps = 3
  config.update(fields)
  return config


@pytest.fixture
def make_config():
  return tiny_config


def pytest_sessionfinish(session):
  if not os.environ.get('PYTEST_XDIST_WORKER'):  # the controller, after every worker
    shutil.rmtree(COMPILATION_CACHE, ignore_errors=True)
