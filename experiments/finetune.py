"""Fine-tunes pretrained weights on a TFDS image dataset and evaluates it.

    python -m experiments.finetune --config=experiments/configs/finetune.py:inception_v3 \
        --config.dataset=tf_flowers [--config.trainable=head] [--workdir=DIR]

The variants, the data and the recipe: experiments/configs/finetune.py. Running it again with
the same workdir resumes from the latest checkpoint; SIGTERM or Ctrl-C saves first.
"""

CONFIG = 'experiments/configs/finetune.py:inception_v3'  # --config's default
WORKDIR = '/tmp/finetune'  # --workdir's default

if __name__ == '__main__':
  from inception_jax import hostmem

  hostmem.keep_freed_memory()  # first, before jax or TensorFlow allocates: docs/performance.md, "Host memory"
  from experiments import main

  main.run(CONFIG, WORKDIR)
