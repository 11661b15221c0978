"""The ImageNet-style experiment: its configs, input pipelines (MNIST through the ImageNet
pipeline at 75x75x3), and a short real run at 32x32x3 that learns (a narrow MNIST network:
GoogLeNet takes a minute to compile)."""

import json

import numpy as np
import pytest

from experiments.configs import imagenet_inception
from inception_jax import data, models, train


def mnist_at(size, **fields):
  """The ImageNet pipeline (Inception crops, tiled to 3 channels) and recipe (label
  smoothing, weight decay, aux-loss weight) on MNIST at size x size x 3, with a narrow
  network, Adam and float32 compute (bfloat16 convolutions are slow on CPU)."""
  config = imagenet_inception.get_config('mnist_inception')
  config.model.update(
      widths=(4, 8), reduce_width=4, hidden_units=32, image_size=size, in_channels=3, drop_rate=0.0, dtype='float32'
  )
  config.update(
      dataset='mnist',
      train_split='train',
      eval_split='test[:500]',
      image_size=size,
      crop_area_range=(0.5, 1.0),
      random_flip=False,
      normalization='none',
      shuffle_buffer_size=1000,
      global_batch_size=32,
      eval_batch_size=250,
      optimizer='adam',
      learning_rate=2e-3,
      num_train_steps=40,
      warmup_steps=5,
      lr_schedule='cosine',
      log_every_steps=20,
      checkpoint_every_steps=40,
      eval_every_steps=0,
  )
  config.update(fields)
  return config


def test_configs_name_their_model_and_reference_result():
  for variant, size in [('googlenet', 224), ('inception_v3', 299), ('inception_v4', 299), ('synthetic', 224)]:
    config = imagenet_inception.get_config(variant)
    assert config.image_size == size and config.model.dtype == 'bfloat16'
  assert imagenet_inception.get_config('inception_v3').optimizer == 'rmsprop'
  assert '69.78%' in imagenet_inception.__doc__ and '77.29%' in imagenet_inception.__doc__
  assert 'Reference, not a measurement' in imagenet_inception.__doc__
  with pytest.raises(ValueError, match=r"Unknown variant 'resnet50'.*googlenet.*synthetic"):
    imagenet_inception.get_config('resnet50')


def test_synthetic_input_gives_fixed_batches_of_the_configured_shape():
  config = imagenet_inception.get_config('synthetic')
  config.update(image_size=32, global_batch_size=8, eval_batch_size=4, num_classes=7)
  inputs = data.create_input(config, process_index=1, process_count=2)
  first, second = next(iter(inputs.train_batches(0))), next(iter(inputs.train_batches(5)))
  assert first['image'].shape == (4, 32, 32, 3) and inputs.num_classes == 7
  assert first['label'].max() < 7
  np.testing.assert_array_equal(first['image'], second['image'])
  (evaluation,) = list(inputs.eval_batches())
  assert evaluation['mask'].tolist() == [1, 1]


def test_unknown_dataset_is_reported():
  with pytest.raises(ValueError, match="Unknown TFDS dataset 'imagenet2013'"):
    data.create_input(mnist_at(75, dataset='imagenet2013'))


def test_eval_split_is_padded_alike_on_every_process():
  config = mnist_at(75, eval_split='test[:301]', eval_batch_size=100, normalization='inception')
  parts = [list(data.create_input(config, i, 2).eval_batches()) for i in range(2)]
  # 151 and 150 examples, in batches of 50: 4 batches each, 301 real examples in all.
  assert [len(p) for p in parts] == [4, 4]
  assert sum(b['mask'].sum() for p in parts for b in p) == 301
  batch = parts[0][0]
  assert batch['image'].shape == (50, 75, 75, 3) and -1.0 <= batch['image'].min() and batch['image'].max() <= 1.0
  np.testing.assert_array_equal(batch['image'][..., 0], batch['image'][..., 2])  # grey, tiled to 3 channels


def test_imagenet_pipeline_learns_mnist(tmp_path):
  _, final = train.train_and_evaluate(mnist_at(32), str(tmp_path))
  assert final['step'] == 40
  assert final['test_accuracy'] > 0.5  # chance is 0.1; 69.6% on the development machine
  assert final['test_top5_accuracy'] >= final['test_accuracy']
  on_disk = json.loads((tmp_path / 'final_metrics.json').read_text())
  assert on_disk['test_top5_accuracy'] == final['test_top5_accuracy']


def test_every_registered_model_has_a_config():
  for name in models.list_models():
    assert imagenet_inception.get_config(name).model.name == name
