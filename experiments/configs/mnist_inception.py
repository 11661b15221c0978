"""Configs for the seed's MNIST Inception network (`python -m experiments.mnist_inception`).

Variants, selected as `--config=experiments/configs/mnist_inception.py:VARIANT`:

- default (no variant): our recipe, sized to finish within 15 minutes on a small CPU machine.
    python -m experiments.mnist_inception --workdir=/tmp/mnist_inception
  One epoch at batch 128, chosen on a validation split (train[55000:], held out from
  training). Measured on 2 CPU cores (AMD EPYC, no GPU), data preparation and compilation
  included: 12 min 10 s, 99.06% test accuracy, 4.75 GiB peak memory (docs/training.md's results table).

- `paper`: seed 000's exact recipe: batch 50, Adam at a constant 1e-4, 20,000 steps,
  dropout 0.5, no schedule.
    python -m experiments.mnist_inception --config=experiments/configs/mnist_inception.py:paper \
        --workdir=/tmp/mnist_inception_paper
  The seed reports 98.5% test accuracy after about an hour on a GTX 1060. 20,000 steps is
  many hours on a 2-core CPU; it is meant for a GPU.
"""

import ml_collections

from experiments.configs import default


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  config = default.get_config()

  config.model.name = 'mnist_inception'
  config.model.widths = (32, 64)  # maps per tower in each of the two modules (the seed's map1, map2)
  config.model.reduce_width = 16  # maps of the 1x1 reductions (reduce1x1)
  config.model.hidden_units = 700  # the hidden dense layer (num_fc1)
  config.model.drop_rate = 0.5  # dropout on the hidden layer

  config.dataset = 'mnist'
  config.global_batch_size = 128
  config.eval_batch_size = 250  # an evaluation step's buffers fit where a training step's were
  config.num_train_steps = 470  # 1.003 epochs: what fits in 15 minutes on 2 CPU cores
  config.steps_per_loop = 10  # one set of step buffers serves 10 steps (docs/performance.md, "Host memory")

  config.optimizer = 'adam'
  config.learning_rate = 2e-3  # peak
  config.lr_schedule = 'cosine'
  config.warmup_steps = 30
  config.lr_multipliers = {'fc1': 1.0}  # --config.lr_multipliers.fc1=0.1 slows the big layer's steps

  config.log_every_steps = 10
  config.eval_every_steps = 0  # only at the end
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 2
  # Written before training goes on: a background write's 1.7 GB host copy beside the next
  # steps' buffers made the default run peak at 7.4 GiB; 4.7 GiB without (docs/performance.md, "Host memory").
  config.async_checkpoints = False

  if variant == 'paper':
    config.global_batch_size = 50
    config.num_train_steps = 20_000
    config.learning_rate = 1e-4
    config.lr_schedule = 'constant'
    config.warmup_steps = 0
    config.log_every_steps = 100
    config.eval_every_steps = 1000
    config.checkpoint_every_steps = 1000
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of mnist_inception's config; known: 'paper'.")
  return config
