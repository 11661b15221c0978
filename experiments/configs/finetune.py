"""Configs for fine-tuning pretrained weights on a TFDS image dataset (`python -m experiments.finetune`).

Variants, selected as `--config=experiments/configs/finetune.py:MODEL[.TAG]`: a model with
published weights and, optionally, which of them (`models.list_pretrained()`; default its
first): `inception_v3` (torchvision's), `inception_v3.tf_in1k`, `googlenet`, `inception_v4`,
`inception_resnet_v2`, ...

    python -m experiments.finetune --config=experiments/configs/finetune.py:inception_v3 \
        --config.dataset=tf_flowers --workdir=/tmp/finetune

The weights are downloaded once (or read from $INCEPTION_JAX_CACHE); `--config.pretrained`
may instead name a .pth/.safetensors file or a converted folder. The classifier (and the aux
head's) is new, sized for the dataset. `--config.trainable=head` trains it alone, the rest
frozen with its BatchNorm statistics (it learns faster at `--config.learning_rate=1e-3`);
`all` (the default) trains everything.

The data: any TFDS image-classification dataset by name, through the Inception input pipeline
at the weights' own preprocessing (input size, evaluation crop, mean/std). The last tenth of
its 'train' split is held out for evaluation, so datasets with only a 'train' split
(tf_flowers) work as they are; `--config.train_split=train --config.eval_split=test` trains on
all of it and evaluates on a test split instead.
"""

import ml_collections

from experiments.configs import default
from inception_jax import models


def get_config(variant: str = 'inception_v3') -> ml_collections.ConfigDict:
  model, _, tag = (variant or 'inception_v3').partition('.')
  weights = models.pretrained_weights(model, tag or None)  # an unknown model or tag names the known ones
  config = default.get_config()

  config.model.name = model
  config.pretrained = weights.tag
  config.trainable = 'all'

  config.dataset = 'tf_flowers'
  config.train_split = 'train[:90%]'
  config.eval_split = 'train[90%:]'
  config.input_pipeline = 'inception'
  config.image_size = weights.preprocessing.input_size
  config.eval_crop_fraction = weights.preprocessing.crop_fraction
  config.normalization = weights.preprocessing.normalization

  config.global_batch_size = 64
  config.eval_batch_size = 64
  config.num_epochs = 5
  config.optimizer = 'adam'
  config.base_learning_rate = 1e-4  # per 64 images: small steps keep what the weights know
  config.base_batch_size = 64
  config.lr_schedule = 'cosine'
  config.warmup_epochs = 0.5
  config.label_smoothing = 0.1
  config.aux_loss_weight = 0.3 if model == 'googlenet' else 0.4

  config.log_every_steps = 10
  config.eval_every_epochs = 1
  config.checkpoint_every_steps = 200
  return config
