"""Inception-ResNet-v2 against timm's: parameters, multiply-adds, numerical parity, the API.

The reference is scripts/torch_refs/timm_inception_resnet_v2.py (timm's module structure and
state_dict keys). The network is big for a 2-core CI machine: one jitted apply per input
size (compiled without LLVM's optimizations), batch 1, sizes near the 75x75 minimum.
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from inception_jax import analysis
from inception_jax.models import convert
from inception_jax.models.convert import INCEPTION_RESNET_V2_TIMM_RENAMES as TORCH_RENAMES
from inception_jax.models.inception_resnet_v2 import InceptionResnetV2
from model_utils import cheap_jit, variable_shapes
from scripts.torch_refs import randomize, timm_inception_resnet_v2

# timm's feature_info taps, then the pooled features; the same in training and evaluation.
FEATURES = {'conv2d_2b', 'conv2d_4a', 'repeat', 'repeat_1', 'conv2d_7b', 'pre_logits'}


@pytest.fixture(scope='module')
def reference():
  """timm's network with random weights and BatchNorm statistics, and its Flax conversion."""
  torch.manual_seed(0)
  ref = timm_inception_resnet_v2.InceptionResnetV2()
  calibration = torch.randn(8, 3, 107, 107, generator=torch.Generator().manual_seed(1))
  randomize(ref, calibration)  # BatchNorm statistics of this batch; weights from the seed above
  template = variable_shapes(InceptionResnetV2(), (1, 75, 75, 3))
  variables, missing, unexpected = convert.torch_to_flax(ref.state_dict(), template, TORCH_RENAMES)
  assert missing == [] and unexpected == []
  return ref, variables


def test_parameters_and_multiply_adds_match_timm(reference):
  layers = analysis.count(InceptionResnetV2(), (299, 299, 3), train=False)
  params = sum(l.params for l in layers)
  assert params == sum(p.numel() for p in reference[0].parameters()) == 55_843_464
  assert f'{params / 1e6:.2f}M' == '55.84M'  # timm's model card
  # timm's benchmark table says 13.18 GMACs at 299; we count 13.156 G (0.2% less). We
  # count only conv and dense multiply-adds; timm's profiler also charges element-wise
  # layers (the BatchNorms alone are 13.5 M per image, ReLUs, residual adds, pools).
  macs = sum(l.macs for l in layers)
  assert macs == 13_155_794_016
  assert abs(macs / 13.18e9 - 1) < 0.01
  shapes = {l.name: l.output_shape for l in layers}
  assert shapes['conv2d_4a/conv'] == (71, 71, 192)
  assert shapes['repeat/9/conv2d'] == (35, 35, 320)
  assert shapes['repeat_1/19/conv2d'] == (17, 17, 1088)
  assert shapes['block8/conv2d'] == (8, 8, 2080)
  assert shapes['conv2d_7b/conv'] == (8, 8, 1536)
  assert shapes['classif'] == (1000,)


@pytest.mark.parametrize('height, width', [(75, 75), (99, 83)])
def test_logits_match_timm_reference(reference, height, width):
  ref, variables = reference
  x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height))
  with torch.no_grad():
    want = ref(x).numpy()
  model = InceptionResnetV2()
  apply = cheap_jit(functools.partial(model.apply, train=False))
  got, features = apply(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
  # Measured 1.3e-05 (75x75) and 1.1e-05 (99x83), logits of std 0.5; torch's own float32
  # is 8e-06 from float64. The scaled residuals keep this deep network better conditioned
  # than Inception-v4.
  assert np.abs(np.asarray(got) - want).max() < 1e-4
  assert set(features) == FEATURES and features['conv2d_7b'].shape[1:3] == (1, 1)


def test_convert_state_dict_reads_the_class_count(reference):
  ref, variables = reference
  state_dict = dict(ref.state_dict())
  # As an older TF port: 1001 classes, background first.
  state_dict['classif.weight'], state_dict['classif.bias'] = torch.ones(1001, 1536), torch.zeros(1001)
  model, converted, missing, unexpected = convert.convert_state_dict('inception_resnet_v2', state_dict, source='timm')
  assert (model.num_classes, missing, unexpected) == (1001, [], [])
  assert converted['params']['classif']['kernel'].shape == (1536, 1001)
  var = lambda v: v['batch_stats']['repeat_1']['7']['branch1_2']['bn']['var']
  np.testing.assert_array_equal(var(converted), var(variables))


def test_training_features_options_and_dtypes():
  model = InceptionResnetV2(num_classes=0, global_pool='max', drop_rate=0.2, dtype=jnp.bfloat16)
  variables = variable_shapes(model, (1, 75, 75, 3))
  x = jnp.zeros((2, 91, 75, 3))
  train_apply = functools.partial(
      model.apply, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(0)}
  )
  (logits, features), _ = jax.eval_shape(train_apply, variables, x)
  assert set(features) == FEATURES  # as in evaluation (test_logits_match_timm_reference)
  assert logits.shape == (2, 1536)  # num_classes=0: the pooled features
  assert logits.dtype == jnp.float32 and features['repeat_1'].dtype == jnp.bfloat16
  assert features['repeat'].shape == (2, 9, 7, 320)
  stored = flax.traverse_util.flatten_dict(variables)
  assert {v.dtype for v in stored.values()} == {jnp.dtype(jnp.float32)}
  # timm's nesting and names: repeat.3.branch1.0.bn.running_var, block8.conv2d.bias.
  assert ('batch_stats', 'repeat', '3', 'branch1_0', 'bn', 'var') in stored
  assert ('params', 'block8', 'conv2d', 'bias') in stored
  assert not any('classif' in path for path in stored)
