"""Inception v3 and the FID Inception: published parameter and multiply-add counts, and
parity with torchvision's Inception3 (scripts/torch_refs/torchvision_inception.py,
torchvision 0.20) and pytorch-fid's (scripts/torch_refs/pytorch_fid_inception.py, 0.3.0)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from inception_jax import analysis, preprocess
from inception_jax.models import convert, inception_v3
from inception_jax.models.inception_v3 import InceptionV3
from model_utils import abstract_apply, cheap_jit, param_count, variable_shapes
from scripts.torch_refs import nchw, numpy_state_dict, randomize
from scripts.torch_refs import pytorch_fid_inception as fid_ref
from scripts.torch_refs import torchvision_inception as tv_inception


@functools.cache
def shapes(**fields):
  return variable_shapes(InceptionV3(**fields), (1, 75, 75, 3))


def test_parameter_counts_match_torchvision():
  assert param_count(shapes(aux_logits=False)) == 23_834_568
  assert param_count(shapes(aux_logits=True)) == 27_161_264
  # pytorch-fid: 1008 classes, no aux head.
  assert param_count(variable_shapes(inception_v3.inception_v3_fid(), (1, 75, 75, 3))) == 23_834_568 + 8 * 2049


def test_multiply_adds_match_torchvision():
  layers = analysis.count(InceptionV3(aux_logits=False), (299, 299, 3), train=False)
  macs = sum(l.macs for l in layers)
  assert macs == pytest.approx(5.713e9, rel=0.01)
  assert macs == 5_713_216_096  # torchvision's 5.713 G: every conv and fc counted, nothing else


def test_every_size_from_75_works_with_the_same_weights_and_keys():
  model, variables = InceptionV3(), shapes()
  keys = None
  for size in [(75, 75), (76, 120), (299, 299)]:
    logits, features = abstract_apply(model, variables, (1, *size, 3))
    assert logits.shape == features['aux_logits'].shape == (1, 1000), size
    assert features['pre_logits'].shape == (1, 2048)
    assert keys in (None, list(features))
    keys = list(features)
  train_logits, train_features = abstract_apply(model, variables, (2, 75, 75, 3), train=True)
  assert train_logits.shape == (2, 1000) and list(train_features) == keys
  assert {k: features[k].shape[1:] for k in ('maxpool1', 'maxpool2', 'Mixed_6e', 'Mixed_7c')} == {
      'maxpool1': (73, 73, 64),
      'maxpool2': (35, 35, 192),
      'Mixed_6e': (17, 17, 768),
      'Mixed_7c': (8, 8, 2048),
  }


def test_options_num_classes_pool_and_dtype():
  variables = shapes(num_classes=0)
  logits, features = abstract_apply(InceptionV3(num_classes=0), variables, (1, 75, 75, 3))
  assert logits.shape == (1, 2048) and 'aux_logits' not in features and 'fc' not in variables['params']
  logits, _ = abstract_apply(
      InceptionV3(global_pool='avgmax', aux_logits=False), shapes(aux_logits=False), (1, 75, 75, 3)
  )
  assert logits.shape == (1, 1000)
  variables = shapes(dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  logits, features = abstract_apply(InceptionV3(dtype=jnp.bfloat16), variables, (1, 75, 75, 3))
  assert logits.dtype == features['aux_logits'].dtype == jnp.float32 and features['Mixed_7c'].dtype == jnp.bfloat16


def test_torchvision_weights_give_torchvision_logits():
  torch.manual_seed(0)
  # Calibrated at 299x299, where torchvision's aux head runs in training.
  reference = randomize(
      tv_inception.Inception3(transform_input=True), torch.randn(2, 3, 299, 299)
  )  # aux BN needs 2 at 1x1
  model, variables, missing, unexpected = convert.convert_state_dict(
      'inception_v3', numpy_state_dict(reference), source='torchvision'
  )
  assert missing == [] and unexpected == []
  assert (model.transform_input, model.aux_logits) == (True, True)

  taps = {}
  reference.Mixed_6e.register_forward_hook(lambda m, i, o: taps.__setitem__('Mixed_6e', o))
  apply = cheap_jit(functools.partial(model.apply, train=False))
  for size in [(299, 299), (75, 91)]:
    x = np.random.default_rng(1).normal(size=(1, *size, 3)).astype(np.float32)
    logits, features = apply(variables, x)
    with torch.no_grad():
      expected = reference(nchw(x)).numpy()
      if size[0] >= 299:  # torchvision's aux head needs Mixed_6e at 17x17
        aux = reference.AuxLogits(taps['Mixed_6e']).numpy()
        # Its logits are larger (|aux| ~ 8 here): compare relative to their scale.
        assert np.abs(np.asarray(features['aux_logits']) - aux).max() < 1e-4 * max(1.0, np.abs(aux).max())
    assert np.abs(np.asarray(logits) - expected).max() < 1e-4, size


def test_pytorch_fid_weights_give_pytorch_fid_features():
  torch.manual_seed(0)
  # Calibrated on inputs like the test's: resized [0, 1] noise, scaled to [-1, 1].
  calibration = 2 * torch.nn.functional.interpolate(torch.rand(2, 3, 64, 80), size=(299, 299), mode='bilinear') - 1
  network = randomize(fid_ref.fid_inception_v3(), calibration, seed=1)
  extractor = fid_ref.InceptionV3(network, output_blocks=(0, 1, 2, 3)).eval()  # resize and normalize, as FID runs it
  model, variables, missing, unexpected = convert.convert_state_dict(
      'inception_v3_fid', numpy_state_dict(network), source='pytorch_fid'
  )
  assert missing == [] and unexpected == []
  assert model.num_classes == 1008 and not model.aux_logits

  apply = cheap_jit(lambda v, x: model.apply(v, preprocess.fid_inputs(x), train=False))
  x = np.random.default_rng(2).uniform(size=(1, 64, 80, 3)).astype(np.float32)  # [0, 1] images
  logits, features = apply(variables, x)
  with torch.no_grad():
    taps = extractor(nchw(x))
    expected = network(
        2 * torch.nn.functional.interpolate(nchw(x), size=(299, 299), mode='bilinear', align_corners=False) - 1
    )
  for tap, (dims, key) in zip(taps, inception_v3.FID_FEATURES.items()):
    tap = tap.numpy().transpose(0, 2, 3, 1)
    assert tap.shape[-1] == dims
    ours = np.asarray(features[key]).reshape(tap.shape)
    # Maps deep in the network carry float32 rounding of ~5e-5 of their scale.
    assert np.abs(ours - tap).max() < 3e-4 * max(1.0, np.abs(tap).max()), key
  assert np.abs(np.asarray(logits) - expected.numpy()).max() < 1e-4
