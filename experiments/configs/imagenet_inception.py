"""Configs for ImageNet-style training of the Inception networks (`python -m experiments.imagenet_inception`).

Variants, selected as `--config=experiments/configs/imagenet_inception.py:VARIANT`:

- `googlenet` (default): GoogLeNet with BatchNorm and both auxiliary heads (loss weight 0.3,
  as the paper), 224x224, SGD with Nesterov momentum, 5 warmup epochs then cosine decay,
  label smoothing 0.1, weight decay 1e-4, bfloat16 compute, 90 epochs at batch 1024.
    python -m experiments.imagenet_inception --workdir=/tmp/googlenet \
        --config=experiments/configs/imagenet_inception.py:googlenet
  Reference, not a measurement of this code: torchvision's GoogLeNet weights reach 69.78%
  top-1 (89.53% top-5) on the ImageNet validation set. This recipe has not been run to the
  end here (no ImageNet and no accelerator on the development machine).

- `inception_v3`: Inception v3 with its auxiliary head (loss weight 0.4, TF-slim's),
  299x299, the paper's RMSProp (decay 0.9, epsilon 1.0) with the learning rate x0.94 every
  2 epochs, label smoothing 0.1, weight decay 4e-5, gradients clipped at a global norm of 2.0,
  evaluated with a moving average of the weights (TensorFlow's: decay 0.9999 with its
  warm-up), bfloat16 compute, 100 epochs at batch 1024.
    python -m experiments.imagenet_inception --workdir=/tmp/inception_v3 \
        --config=experiments/configs/imagenet_inception.py:inception_v3
  Reference, not a measurement of this code: torchvision's Inception v3 weights reach
  77.29% top-1 (93.45% top-5); the paper reports 78.8% (single crop, 299x299).

- Any other model of the registry (`inception_v4`, `inception_resnet_v2`,
  `googlenet_torchvision`, ...) by name: Inception v3's recipe at 299x299 (224x224 for the
  GoogLeNets, with GoogLeNet's recipe). No reference result is claimed for them here.

- `synthetic`: GoogLeNet's recipe on random images (`config.dataset = 'synthetic'`): the
  speed of the training step alone, without reading or preprocessing data.

The data: any TFDS image-classification dataset by name (`--config.dataset=imagenette`,
`cifar10`, `mnist`: grey images are tiled to 3 channels). ImageNet (`imagenet2012`) needs
its manual files: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in a folder and
pass `--config.manual_dir=FOLDER`. Every field can be overridden; a misspelt one is an error.
Schedules are in epochs and learning rates per `base_batch_size` images, so
`--config.global_batch_size=256` keeps the recipe (steps, warmup, decay and learning rate
follow; experiments/configs/default.py). `--config.learning_rate=0.1` sets the peak itself.
"""

import ml_collections

from experiments.configs import default
from inception_jax import models

GOOGLENET_MODELS = ('googlenet', 'googlenet_torchvision')


def get_config(variant: str = 'googlenet') -> ml_collections.ConfigDict:
  variant = variant or 'googlenet'
  model = 'googlenet' if variant == 'synthetic' else variant
  if model not in models.list_models():
    raise ValueError(
        f"Unknown variant {variant!r} of imagenet_inception's config; use a model name "
        f'({", ".join(models.list_models())}) or synthetic.'
    )
  googlenet_like = model in GOOGLENET_MODELS
  config = default.get_config()

  config.model.name = model
  config.model.dtype = 'bfloat16'

  config.dataset = 'synthetic' if variant == 'synthetic' else 'imagenet2012'
  config.eval_split = 'validation'
  config.input_pipeline = 'inception'  # tf.data streaming, each process reading its part (data.InceptionInput)
  config.image_size = 224 if googlenet_like else 299

  config.global_batch_size = 1024
  config.eval_batch_size = 1024
  config.num_epochs = 90 if googlenet_like else 100

  config.label_smoothing = 0.1
  config.weight_decay = 1e-4 if googlenet_like else 4e-5
  config.aux_loss_weight = 0.3 if googlenet_like else 0.4  # per auxiliary classifier (TF-slim's 0.4 for v3)
  if googlenet_like:
    config.optimizer = 'sgd'
    config.nesterov = True
    config.base_learning_rate = 0.1  # per 256 images: 0.4 at 1024
    config.base_batch_size = 256
    config.lr_schedule = 'cosine'
    config.warmup_epochs = 5
  else:
    config.optimizer = 'rmsprop'  # the paper's: decay 0.9, epsilon 1.0 (the defaults)
    config.base_learning_rate = 0.045  # the paper's, at batch 1,600 (32 x 50 replicas)
    config.base_batch_size = 1600
    config.lr_schedule = 'exponential'  # x0.94 every 2 epochs
    config.lr_decay_epochs = 2
    config.warmup_epochs = 2
    config.grad_clip_norm = 2.0  # the paper's section 8
    # TensorFlow's Inception v3: ExponentialMovingAverage(MOVING_AVERAGE_DECAY = 0.9999, num_updates=global_step).
    config.ema_decay = 0.9999
    config.ema_warmup = True

  config.log_every_steps = 100
  config.eval_every_epochs = 5
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3

  if variant == 'synthetic':
    config.num_train_steps = 100
    config.warmup_steps = 10
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 100
    config.log_every_steps = 10
  return config
