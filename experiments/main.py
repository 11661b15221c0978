"""The command line both experiments share: --config, --workdir and the multi-process flags.

Several hosts: start the same command once per process, with the same workdir on a shared
filesystem and --coordinator_address=HOST:PORT (process 0's) --num_processes=N
--process_id=I, or --auto_distributed where JAX detects the cluster (README, "Scaling out").
"""

from absl import app, flags, logging
from ml_collections import config_flags

from inception_jax import parallel, train


def run(default_config: str, default_workdir: str) -> None:
  """Defines the flags with these defaults and runs `train.train_and_evaluate`."""
  config = config_flags.DEFINE_config_file('config', default_config, 'Training config file[:variant].',
                                           lock_config=True)
  workdir = flags.DEFINE_string('workdir', default_workdir, 'Checkpoints, logs and final_metrics.json go here.')
  coordinator = flags.DEFINE_string('coordinator_address', '', "Multi-process: process 0's HOST:PORT.")
  num_processes = flags.DEFINE_integer('num_processes', 0, 'Multi-process: how many processes take part.')
  process_id = flags.DEFINE_integer('process_id', -1, "Multi-process: this process's index, 0 to num_processes - 1.")
  auto = flags.DEFINE_bool('auto_distributed', False, 'Multi-process: let JAX detect the cluster (TPU, Slurm, MPI).')

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    logging.set_verbosity(logging.INFO)
    parallel.initialize_distributed(coordinator.value, num_processes.value, process_id.value, auto=auto.value)
    train.train_and_evaluate(config.value, workdir.value)

  app.run(main)
