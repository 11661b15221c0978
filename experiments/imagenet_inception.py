"""Trains an Inception network ImageNet-style on a TFDS image-classification dataset.

    python -m experiments.imagenet_inception --workdir=DIR \
        --config=experiments/configs/imagenet_inception.py:googlenet [--config.field=value ...]

Variants (googlenet, inception_v3, any registered model, synthetic), their recipes and the
reference results they aim at: experiments/configs/imagenet_inception.py. Running it again
with the same workdir resumes from the latest checkpoint.

Several hosts: the multi-process flags of experiments/main.py (docs/scaling.md).
"""

CONFIG = 'experiments/configs/imagenet_inception.py:googlenet'  # --config's default
WORKDIR = '/tmp/imagenet_inception'  # --workdir's default

if __name__ == '__main__':
  from inception_jax import hostmem

  hostmem.keep_freed_memory()  # first, before jax or TensorFlow allocates: docs/performance.md, "Host memory"
  from experiments import main

  main.run(CONFIG, WORKDIR)
