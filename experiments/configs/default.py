"""Every field the library reads, each with its default: the experiments' configs start here.

    config = default.get_config()   # then change what differs (mnist_inception.py, imagenet_inception.py)

`-1` means "derive it", resolved in one place (`train.resolve_config`) once the size of the
training split is known: steps from epochs, warmup and decay steps from epochs, and the
learning rate from the batch size by the linear scaling rule. So `--config.global_batch_size=N`
keeps a recipe's schedule in epochs and its learning rate per image.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  config.model.name = (
      'mnist_inception'  # a name from inception_jax.models.list_models(); other model.* fields are its own
  )
  config.model.dtype = 'float32'  # compute dtype; parameters and BatchNorm statistics stay float32
  # Start from these weights (experiments/configs/finetune.py): a tag of the model's published weights
  # (models.list_pretrained(): 'torchvision', 'tf_in1k', ...), a .pth/.safetensors file or a converted
  # folder; the model takes their layout and a new classifier for the dataset. '': a random start.
  config.pretrained = ''
  config.trainable = 'all'  # 'all', or 'head': the classifier only; the rest frozen, BatchNorm statistics too

  # Data.
  config.dataset = 'mnist'  # a TFDS name, or 'synthetic' (random images: the speed of the steps alone)
  config.train_split = 'train'
  config.eval_split = 'test'
  config.data_dir = ''  # TFDS data_dir; '' means TFDS's default (~/tensorflow_datasets)
  config.manual_dir = ''  # the dataset's files for offline preparation; '' means $TFDS_MANUAL_DIR, else download
  config.input_pipeline = 'memory'  # 'memory' (whole splits in memory, as stored) or 'inception' (tf.data, crops)
  config.num_classes = 1000  # dataset='synthetic' only; TFDS datasets say their own
  # The 'inception' pipeline (and 'synthetic'):
  config.image_size = 224  # training and evaluation crops, pixels
  config.crop_area_range = (0.08, 1.0)  # random-resized crop: fraction of the image's area
  config.crop_aspect_ratio_range = (3 / 4, 4 / 3)  # ... and its width / height
  config.random_flip = True  # left-right, in training
  config.eval_crop_fraction = 0.875  # evaluation: shorter side to image_size / this, central crop
  config.normalization = 'inception'  # 'inception' ([-1, 1]), 'imagenet' (mean/std) or 'none' ([0, 1])
  config.shuffle_buffer_size = 16_384  # examples

  # Steps.
  config.seed = 0  # parameters, dropout and the order of training examples
  config.global_batch_size = 64  # examples per step over all devices of all processes
  config.eval_batch_size = 1000  # the same, for evaluation
  config.num_train_steps = -1  # -1: num_epochs over the training split
  config.num_epochs = 1.0  # when num_train_steps is -1
  config.steps_per_loop = 1  # steps per call of the compiled step (a scan; fewer where the loop logs/saves/evals)

  # Optimizer and schedule.
  config.optimizer = 'adam'  # 'adam', 'sgd' (momentum) or 'rmsprop' (TensorFlow 1's, as Inception v3)
  config.learning_rate = -1.0  # peak; -1: base_learning_rate * global_batch_size / base_batch_size
  config.base_learning_rate = 1e-3  # when learning_rate is -1
  config.base_batch_size = 256  # the batch base_learning_rate is meant for
  config.lr_schedule = 'cosine'  # after warmup: 'cosine' (to 0), 'exponential' or 'constant'
  config.warmup_steps = -1  # linear from 0; -1: warmup_epochs
  config.warmup_epochs = 0.0
  config.lr_decay_rate = 0.94  # 'exponential': the factor ...
  config.lr_decay_steps = -1  # ... every this many steps; -1: lr_decay_epochs
  config.lr_decay_epochs = 2.0
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999
  config.adam_eps = 1e-8
  config.momentum = 0.9  # 'sgd' and 'rmsprop'
  config.nesterov = False  # 'sgd'
  config.rmsprop_decay = 0.9
  config.rmsprop_eps = 1.0  # inside the square root, as TensorFlow 1
  config.weight_decay = 0.0  # L2 on kernels (rank >= 2), added to the gradient
  config.lr_multipliers = (
      ml_collections.ConfigDict()
  )  # learning-rate factor per top-level module: --config.lr_multipliers.fc1=0.1
  config.label_smoothing = 0.0
  config.aux_loss_weight = 0.3  # per auxiliary classifier (GoogLeNet's paper)
  config.grad_clip_norm = (
      0.0  # the gradient scaled down to at most this global norm (Inception v3's paper: 2.0); 0: off
  )
  # A moving average of the weights and BatchNorm statistics (as TF-slim and timm keep it), evaluated in their place:
  config.ema_decay = 0.0  # e.g. 0.9999 (TensorFlow's Inception v3); 0: off
  config.ema_warmup = False  # TensorFlow's num_updates form: the decay is min(ema_decay, (1 + n) / (10 + n)) at step n
  config.eval_ema = True  # with ema_decay > 0: evaluate the average (False: the raw weights); both are logged

  # Devices.
  config.num_devices = -1  # devices of the 'data' axis; -1: all of them, on every process
  config.shard_params = False  # True: split large parameters and their optimizer state over the devices (FSDP)
  config.shard_min_size = 2**18  # elements; smaller arrays stay replicated when shard_params
  # Compiled steps kept on disk for the next run (a resume compiles nothing it compiled before):
  # 'auto' is $JAX_COMPILATION_CACHE_DIR if set, else ~/.cache/inception_jax/jax; '' turns it off.
  config.compilation_cache_dir = 'auto'

  # Logging, evaluation, checkpoints.
  config.log_every_steps = 10
  config.eval_every_steps = -1  # -1: every eval_every_epochs; 0 or no epochs: only at the end
  config.eval_every_epochs = 0.0
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 2  # the last K checkpoints are kept
  config.async_checkpoints = True  # False: training waits for each write (the MNIST config says why)
  config.resume_from_step = -1  # -1: the newest good checkpoint; N: rewind to step N's (later ones are set aside)
  # Fields (comma-separated) a resume may find changed from the checkpoint's; the run's length may change anyway.
  config.allow_config_change = ''
  return config
