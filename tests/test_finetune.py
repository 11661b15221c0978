"""Fine-tuning from pretrained weights: a new classifier for the dataset, the rest of the network
trained or frozen bit for bit, on real MNIST through the Inception input pipeline."""

import functools
import json

import flax
import jax
import numpy as np
import pytest
import torch

from experiments.configs import finetune as finetune_config
from inception_jax import finetune, models, train
from scripts.torch_refs import torchvision_googlenet as tv_googlenet


@pytest.fixture(scope='module')
def weights_file(tmp_path_factory):
  """A generated torchvision GoogLeNet file (1000 classes), as torchvision publishes it."""
  torch.manual_seed(0)
  path = tmp_path_factory.mktemp('weights') / 'googlenet.pth'
  torch.save(tv_googlenet.GoogLeNet(aux_logits=True).state_dict(), path)
  return str(path)


@pytest.fixture(scope='module')
def tiny_weights(tmp_path_factory):
  """Generated "pretrained" weights of a narrow MNIST Inception for 3-channel images and 5
  classes, as a converted folder: quick to fine-tune through the Inception input pipeline."""
  fields = {
      'widths': (4, 8),
      'reduce_width': 4,
      'hidden_units': 64,
      'drop_rate': 0.0,
      'in_channels': 3,
      'num_classes': 5,
  }
  model = models.create_model('mnist_inception', use_batchnorm=True, **fields)
  # Jitted: op by op, a whole network's init and apply compile hundreds of small programs.
  variables = jax.jit(model.init, static_argnames='train')(
      jax.random.PRNGKey(1), np.zeros((1, 28, 28, 3), np.float32), train=False
  )
  # BatchNorm statistics of random images: not the initial zeros and ones, so that a change shows.
  images = jax.random.uniform(jax.random.PRNGKey(2), (64, 28, 28, 3), minval=-2, maxval=2)
  _, updates = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))(
      variables, images, rngs={'dropout': jax.random.PRNGKey(3)}
  )
  variables = {'params': variables['params'], **updates}
  fields['use_batchnorm'] = True
  path = tmp_path_factory.mktemp('weights') / 'tiny'
  models.save_pretrained(path, 'mnist_inception', fields, variables)
  return str(path)


def config_for(weights, trainable, model='googlenet', **fields):
  config = finetune_config.get_config('googlenet')
  config.model.name = model
  config.pretrained = weights
  config.trainable = trainable
  config.dataset = 'mnist'
  config.train_split = 'train[:4000]'
  config.eval_split = 'test[:1000]'
  config.image_size = 28
  config.crop_area_range = (0.5, 1.0)  # crops of MNIST's digits, not of its empty margins
  config.random_flip = False
  config.global_batch_size = 32
  config.eval_batch_size = 250
  config.num_train_steps = 60
  config.warmup_steps = 0
  config.lr_schedule = 'constant'
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 30
  config.log_every_steps = 30
  config.update(fields)
  return config


def flat(tree):
  return {'/'.join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}


@pytest.mark.parametrize('trainable, learning_rate', [('head', 3e-2), ('all', 1e-3)])
def test_fine_tuning_learns_and_a_frozen_backbone_stays_bit_identical(tiny_weights, tmp_path, trainable, learning_rate):
  _, pretrained = models.load_pretrained('mnist_inception', tiny_weights)
  config = config_for(tiny_weights, trainable, 'mnist_inception', learning_rate=learning_rate)
  state, final = train.train_and_evaluate(config, str(tmp_path))
  assert final['test_accuracy'] > 0.35, final  # 10 classes: chance is 0.1; 0.556 (head) and 0.489 (all) here
  assert json.load(open(tmp_path / 'final_metrics.json'))['test_accuracy'] == final['test_accuracy']

  params, stats = flat(state.params), flat(state.batch_stats)
  before_params, before_stats = flat(pretrained['params']), flat(pretrained['batch_stats'])
  assert state.params['fc2']['kernel'].shape == (64, 10)  # a new classifier for MNIST's 10 classes
  assert set(params) == set(before_params) and set(stats) == set(before_stats)
  backbone = [k for k in params if not k.startswith('fc2/')]
  changed = [k for k in backbone if not np.array_equal(params[k], before_params[k])]
  changed_stats = [k for k in stats if not np.array_equal(stats[k], before_stats[k])]
  if trainable == 'head':
    assert changed == [] and changed_stats == []  # every frozen array, bit for bit
  else:
    assert len(changed) == len(backbone) and len(changed_stats) == len(stats)

  # The same command again resumes the finished run from its checkpoint: it only evaluates.
  _, again = train.train_and_evaluate(config, str(tmp_path))
  assert (again['step'], again['test_accuracy']) == (final['step'], final['test_accuracy'])
  if trainable == 'all':
    # Issue 30, finding 10: a resume needs no weights file (the checkpoint holds every array and the
    # model they were built as), so a moved file, under its new path or its old one, resumes.
    moved = config_for(str(tmp_path / 'moved'), trainable, 'mnist_inception', learning_rate=learning_rate)
    moved.num_train_steps = 61
    _, longer = train.train_and_evaluate(moved, str(tmp_path))
    assert longer['step'] == 61


def test_the_classifier_is_found_from_the_model_and_kept_when_the_classes_match(tiny_weights):
  assert finetune.classifier_paths(models.create_model('googlenet')) == {
      'fc/kernel',
      'fc/bias',
      'aux1/fc2/kernel',
      'aux1/fc2/bias',
      'aux2/fc2/kernel',
      'aux2/fc2/bias',
  }
  assert finetune.classifier_paths(models.create_model('inception_v3')) == {
      'fc/kernel',
      'fc/bias',
      'AuxLogits/fc/kernel',
      'AuxLogits/fc/bias',
  }
  config = config_for(tiny_weights, 'head', 'mnist_inception')
  model, keep = finetune.create_model(config, 5)  # the weights' own class count keeps their classifier
  assert model.use_batchnorm and model.widths == (4, 8) and 'params/fc2/kernel' in keep
  model, keep = finetune.create_model(config, 10)
  assert model.num_classes == 10 and 'params/fc2/kernel' not in keep and 'params/fc1/kernel' in keep
  assert 'batch_stats/inception1/branch1x1/bn/mean' in keep


def test_the_weights_layout_comes_with_them(weights_file):
  """A torchvision file gives torchvision's GoogLeNet (its layout and transform_input), not the paper's."""
  model, _ = finetune.create_model(config_for(weights_file, 'all'), 10)
  assert (model.layout, model.transform_input, model.num_classes) == ('torchvision', True, 10)


@pytest.mark.parametrize(
    'fields, message',
    [
        ({'trainable': 'backbone'}, "Unknown trainable 'backbone'; use 'all' or 'head'"),
        ({'trainable': 'head', 'pretrained': ''}, "trainable='head' needs pretrained weights"),
        ({'pretrained': 'imagenet'}, "'googlenet' has no weights 'imagenet': its published weights are torchvision"),
    ],
)
def test_bad_fine_tuning_fields_are_one_line(weights_file, fields, message):
  fields = dict(fields)
  config = config_for(weights_file, fields.pop('trainable', 'all'), **fields)
  with pytest.raises(ValueError, match=message):
    finetune.create_model(config, 10)


def test_variants_take_the_weights_preprocessing():
  v3 = finetune_config.get_config('inception_v3')
  assert (v3.pretrained, v3.image_size, v3.normalization) == ('torchvision', 299, 'imagenet')
  assert v3.eval_crop_fraction == 299 / 342
  tf = finetune_config.get_config('inception_resnet_v2.tf_in1k')
  assert (tf.model.name, tf.pretrained, tf.normalization, tf.eval_crop_fraction) == (
      'inception_resnet_v2',
      'tf_in1k',
      'inception',
      299 / 333,
  )
  with pytest.raises(ValueError, match="'inception_v3' has no weights 'imagenet'"):
    finetune_config.get_config('inception_v3.imagenet')
  assert jax.tree.leaves(v3.to_dict())  # a plain config: every field printable by --print_config
