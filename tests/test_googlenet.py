"""GoogLeNet: seed 002's check, published parameter and multiply-add counts, and parity
with torchvision's GoogLeNet (scripts/torch_refs/torchvision_googlenet.py, torchvision 0.20)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from inception_jax import analysis
from inception_jax.models import convert
from inception_jax.models.googlenet import GoogLeNet
from model_utils import abstract_apply, cheap_jit, param_count, random_variables, variable_shapes
from scripts.torch_refs import nchw, numpy_state_dict, randomize
from scripts.torch_refs import torchvision_googlenet as tv_googlenet


@functools.cache
def shapes(**fields):
  return variable_shapes(GoogLeNet(**fields))


def test_seed_002_check_logits_and_both_aux_logits_in_training():
  # Seed 002: x = torch.randn(3, 3, 224, 224); GoogLeNet(aux_logits=True, num_classes=1000).
  model = GoogLeNet(aux_logits=True, num_classes=1000)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 224, 224, 3))
  variables = random_variables(shapes())
  apply = cheap_jit(lambda v, x, key: model.apply(v, x, train=True, rngs={'dropout': key}, mutable=['batch_stats']))
  (logits, features), updates = apply(variables, x, jax.random.PRNGKey(1))
  assert logits.shape == features['aux1'].shape == features['aux2'].shape == (3, 1000)
  assert logits.dtype == features['aux1'].dtype == jnp.float32
  assert np.isfinite(logits).all() and np.isfinite(features['aux2']).all()
  assert features['inception4e'].shape == (3, 14, 14, 832) and features['inception5b'].shape == (3, 7, 7, 1024)
  # Training moves the BatchNorm statistics.
  old, new = variables['batch_stats']['conv1']['bn']['mean'], updates['batch_stats']['conv1']['bn']['mean']
  assert not np.allclose(old, new)


def test_paper_layout_has_true_5x5_kernels_and_the_seed_stem():
  params = shapes()['params']
  assert params['inception3a']['branch5x5']['conv']['kernel'].shape == (5, 5, 16, 32)
  assert params['conv2']['conv']['kernel'].shape == (3, 3, 64, 192) and 'conv3' not in params
  tv = shapes(layout='torchvision')['params']
  assert tv['inception3a']['branch5x5']['conv']['kernel'].shape == (3, 3, 16, 32)
  assert tv['conv2']['conv']['kernel'].shape == (1, 1, 64, 64)


def test_without_batchnorm_convs_have_biases_and_no_statistics():
  variables = shapes(use_batchnorm=False)
  assert 'batch_stats' not in variables
  assert set(variables['params']['inception4a']['branch1x1']['conv']) == {'kernel', 'bias'}
  with pytest.raises(ValueError, match="use_batchnorm=False needs layout='paper'"):
    shapes(layout='torchvision', use_batchnorm=False)


def test_parameter_counts_match_torchvision():
  assert param_count(shapes(layout='torchvision', aux_logits=False)) == 6_624_904
  assert param_count(shapes(layout='torchvision', aux_logits=True)) == 13_004_888
  # The paper layout (seed 002) adds true 5x5 kernels and its own stem; no published figure.
  assert param_count(shapes()) == 13_381_592


def test_multiply_adds_match_torchvision():
  layers = analysis.count(GoogLeNet(layout='torchvision', aux_logits=False), (224, 224, 3), train=False)
  macs = sum(l.macs for l in layers)
  assert macs == pytest.approx(1.498e9, rel=0.01)
  assert macs == 1_498_376_192  # torchvision's 1.498 G: every conv and fc counted, nothing else


@pytest.mark.parametrize('layout', ['paper', 'torchvision'])
def test_every_size_from_15_works_with_the_same_weights_and_keys(layout):
  model, variables = GoogLeNet(layout=layout), shapes(layout=layout)
  keys = None
  for size in [(15, 15), (16, 31), (225, 225)]:
    logits, features = abstract_apply(model, variables, (2, *size, 3))
    assert logits.shape == features['aux1'].shape == features['aux2'].shape == (2, 1000), size
    assert features['pre_logits'].shape == (2, 1024)
    assert keys in (None, list(features))
    keys = list(features)
  train_logits, train_features = abstract_apply(model, variables, (2, 15, 15, 3), train=True)
  assert train_logits.shape == (2, 1000) and list(train_features) == keys


def test_options_num_classes_pool_and_dtype():
  variables = shapes(num_classes=0)
  logits, features = abstract_apply(GoogLeNet(num_classes=0), variables, (2, 64, 64, 3))
  assert logits.shape == (2, 1024) and 'aux1' not in features and 'fc' not in variables['params']
  for pool in ('max', 'avgmax'):
    assert abstract_apply(GoogLeNet(global_pool=pool), shapes(), (2, 64, 64, 3))[0].shape == (2, 1000)
  with pytest.raises(ValueError, match='global_pool'):
    abstract_apply(GoogLeNet(global_pool='min'), shapes(), (2, 64, 64, 3))
  variables = shapes(dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  logits, features = abstract_apply(GoogLeNet(dtype=jnp.bfloat16), variables, (2, 64, 64, 3))
  assert logits.dtype == features['aux1'].dtype == jnp.float32
  assert features['inception5b'].dtype == jnp.bfloat16


def test_torchvision_weights_give_torchvision_logits():
  torch.manual_seed(0)
  reference = randomize(tv_googlenet.GoogLeNet(transform_input=True), torch.randn(4, 3, 64, 64))
  model, variables, missing, unexpected = convert.convert_state_dict(
      'googlenet',
      numpy_state_dict(reference),
      source='torchvision',
      aux_logits=True,  # torchvision ships them untrained
  )
  assert missing == [] and unexpected == []
  assert (model.layout, model.transform_input, model.aux_logits) == ('torchvision', True, True)

  taps = {}
  reference.inception4a.register_forward_hook(lambda m, i, o: taps.__setitem__('4a', o))
  reference.inception4d.register_forward_hook(lambda m, i, o: taps.__setitem__('4d', o))
  apply = cheap_jit(functools.partial(model.apply, train=False))
  for size in [(224, 224), (15, 37)]:  # canonical; the smallest, not square
    x = np.random.default_rng(1).normal(size=(2, *size, 3)).astype(np.float32)
    logits, features = apply(variables, x)
    with torch.no_grad():
      expected = reference(nchw(x)).numpy()
      aux1, aux2 = reference.aux1(taps['4a']).numpy(), reference.aux2(taps['4d']).numpy()
    assert np.abs(np.asarray(logits) - expected).max() < 1e-4, size
    assert np.abs(np.asarray(features['aux1']) - aux1).max() < 1e-4, size
    assert np.abs(np.asarray(features['aux2']) - aux2).max() < 1e-4, size
