"""Trains seed 000's two-module Inception network on MNIST and evaluates it.

    python -m experiments.mnist_inception [--workdir=DIR] \
        [--config=experiments/configs/mnist_inception.py[:paper]] [--config.field=value ...]

Running it again with the same workdir resumes from the latest checkpoint. Offline, point
TFDS at the four MNIST files with TFDS_MANUAL_DIR=../shared/data/mnist (or
--config.manual_dir). Results and timings: README.md. Several processes: the multi-process
flags below, as for experiments.imagenet_inception (README, "Scaling out").
"""

from absl import app, flags, logging
from ml_collections import config_flags

from inception_jax import parallel, train

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'experiments/configs/mnist_inception.py', 'Training config file[:variant].', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/mnist_inception', 'Checkpoints, logs and final_metrics.json go here.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', '', "Multi-process: process 0's HOST:PORT.")
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 0, 'Multi-process: how many processes take part.')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, "Multi-process: this process's index, 0 to num_processes - 1.")
_AUTO = flags.DEFINE_bool('auto_distributed', False, 'Multi-process: let JAX detect the cluster (TPU, Slurm, MPI).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.INFO)
  parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_AUTO.value)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
