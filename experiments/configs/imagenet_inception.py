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
  2 epochs, label smoothing 0.1, weight decay 4e-5, bfloat16 compute, 100 epochs at batch 1024.
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
pass `--config.manual_dir=FOLDER`. Every field can be overridden (`--config.global_batch_size=256
--config.learning_rate=0.1`); a misspelt one is an error.
"""

import ml_collections

from inception_jax import models

IMAGENET_TRAIN_IMAGES = 1_281_167
GOOGLENET_MODELS = ('googlenet', 'googlenet_torchvision')


def get_config(variant: str = 'googlenet') -> ml_collections.ConfigDict:
  variant = variant or 'googlenet'
  model = 'googlenet' if variant == 'synthetic' else variant
  if model not in models.list_models():
    raise ValueError(
        f'Unknown variant {variant!r} of imagenet_inception\'s config; use a model name '
        f'({", ".join(models.list_models())}) or synthetic.'
    )
  googlenet_like = model in GOOGLENET_MODELS
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  config.model.name = model  # a name from inception_jax.models.list_models()
  config.model.dtype = 'bfloat16'  # compute dtype; parameters and BatchNorm statistics stay float32

  config.dataset = 'synthetic' if variant == 'synthetic' else 'imagenet2012'  # a TFDS name, or 'synthetic'
  config.train_split = 'train'
  config.eval_split = 'validation'
  config.data_dir = ''  # TFDS data_dir; '' means TFDS's default (~/tensorflow_datasets)
  config.manual_dir = ''  # folder with the dataset's files for offline preparation; '' means $TFDS_MANUAL_DIR
  config.input_pipeline = 'inception'  # tf.data streaming, each process reading its part (data.InceptionInput)
  config.image_size = 224 if googlenet_like else 299  # training and evaluation crops, pixels
  config.crop_area_range = (0.08, 1.0)  # random-resized crop: fraction of the image's area
  config.crop_aspect_ratio_range = (3 / 4, 4 / 3)  # ... and its width / height
  config.random_flip = True  # left-right, in training
  config.eval_crop_fraction = 0.875  # evaluation: shorter side to image_size / this, central crop
  config.normalization = 'inception'  # 'inception' ([-1, 1]), 'imagenet' (mean/std) or 'none' ([0, 1])
  config.shuffle_buffer_size = 16_384  # examples
  config.num_classes = 1000  # for dataset='synthetic' only; TFDS datasets say their own

  config.seed = 0  # parameters, dropout and the order of training examples
  config.global_batch_size = 1024  # over all devices of all processes
  config.eval_batch_size = 1024
  epochs = 90 if googlenet_like else 100
  config.num_train_steps = epochs * IMAGENET_TRAIN_IMAGES // 1024

  config.label_smoothing = 0.1
  config.weight_decay = 1e-4 if googlenet_like else 4e-5  # on kernels, as L2 on the gradient
  config.aux_loss_weight = 0.3 if googlenet_like else 0.4  # per auxiliary classifier
  steps_per_epoch = IMAGENET_TRAIN_IMAGES // 1024
  if googlenet_like:
    config.optimizer = 'sgd'  # 'sgd', 'rmsprop' or 'adam'
    config.learning_rate = 0.4  # peak: 0.1 per 256 images
    config.momentum = 0.9
    config.nesterov = True
    config.lr_schedule = 'cosine'  # 'cosine', 'exponential' or 'constant'
    config.warmup_steps = 5 * steps_per_epoch
  else:
    config.optimizer = 'rmsprop'
    config.learning_rate = 0.045 * 1024 / 1600  # the paper's 0.045 at batch 1,600 (32 x 50 replicas), scaled
    config.momentum = 0.9
    config.rmsprop_decay = 0.9
    config.rmsprop_eps = 1.0
    config.lr_schedule = 'exponential'
    config.lr_decay_rate = 0.94
    config.lr_decay_steps = 2 * steps_per_epoch
    config.warmup_steps = 2 * steps_per_epoch
  config.adam_b1 = 0.9  # for optimizer='adam'
  config.adam_b2 = 0.999
  config.adam_eps = 1e-8

  config.num_devices = -1  # devices of the 'data' axis; -1: all of them, on every process
  config.shard_params = False  # True: split large parameters and their optimizer state over the devices (FSDP)
  config.shard_min_size = 2**18  # elements; smaller arrays stay replicated when shard_params

  config.log_every_steps = 100
  config.eval_every_steps = 5 * steps_per_epoch  # -1: evaluate only at the end
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.resume_from_step = -1  # -1: the newest good checkpoint; N: rewind to step N's (later ones are set aside)

  if variant == 'synthetic':
    config.num_train_steps = 100
    config.eval_every_steps = -1
    config.checkpoint_every_steps = 100
    config.log_every_steps = 10
  return config
