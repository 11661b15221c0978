"""Trains an Inception network ImageNet-style on a TFDS image-classification dataset.

    python -m experiments.imagenet_inception --workdir=DIR \
        --config=experiments/configs/imagenet_inception.py:googlenet [--config.field=value ...]

Variants (googlenet, inception_v3, any registered model, synthetic), their recipes and the
reference results they aim at: experiments/configs/imagenet_inception.py. Running it again
with the same workdir resumes from the latest checkpoint.

Several hosts: start this same command once per process, with the same workdir on a shared
filesystem and --coordinator_address=HOST:PORT (process 0's) --num_processes=N
--process_id=I, or --auto_distributed where JAX detects the cluster (README, "Scaling out").
"""

from absl import app, flags, logging
from ml_collections import config_flags

from inception_jax import parallel, train

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'experiments/configs/imagenet_inception.py:googlenet', 'Training config file[:variant].',
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/imagenet_inception', 'Checkpoints, logs and final_metrics.json go here.')
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
