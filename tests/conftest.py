import os
import pathlib

import pytest

from experiments.configs import mnist_inception

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / 'shared' / 'data' / 'mnist'

# Offline machines (CI) prepare MNIST from the four IDX files beside the project.
if SHARED_MNIST.is_dir():
  os.environ.setdefault('TFDS_MANUAL_DIR', str(SHARED_MNIST))


def tiny_config(**fields):
  """The default config with a narrow network and short, frequent everything."""
  config = mnist_inception.get_config()
  config.model.widths = (4, 8)
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


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """The training tests compile the same tiny steps many times: compile each once."""
  import jax

  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('jax_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  yield
