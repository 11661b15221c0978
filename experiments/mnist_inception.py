"""Trains seed 000's two-module Inception network on MNIST and evaluates it.

    python -m experiments.mnist_inception [--workdir=DIR] \
        [--config=experiments/configs/mnist_inception.py[:paper]] [--config.field=value ...]

Running it again with the same workdir resumes from the latest checkpoint. Offline, point
TFDS at the four MNIST files with TFDS_MANUAL_DIR=../shared/data/mnist (or
--config.manual_dir). Results and timings: docs/training.md. Several processes: the multi-process
flags of experiments/main.py (docs/scaling.md).
"""

CONFIG = 'experiments/configs/mnist_inception.py'  # --config's default
WORKDIR = '/tmp/mnist_inception'  # --workdir's default

if __name__ == '__main__':
  from inception_jax import hostmem

  hostmem.keep_freed_memory()  # first, before jax or TensorFlow allocates: docs/performance.md, "Host memory"
  from experiments import main

  main.run(CONFIG, WORKDIR)
