"""Inception-v4 against timm's: parameters, multiply-adds, numerical parity, the API.

The reference is scripts/torch_refs/timm_inception_v4.py (timm 1.0.x's module structure and
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
from inception_jax.models import convert, pooling
from inception_jax.models.convert import INCEPTION_V4_TIMM_RENAMES as TORCH_RENAMES
from inception_jax.models.inception_v4 import InceptionV4
from model_utils import cheap_jit, variable_shapes
from scripts.torch_refs import randomize, timm_inception_v4

# timm's feature_info taps, then the pooled features; the same in training and evaluation.
FEATURES = {'features_2', 'features_3', 'features_9', 'features_17', 'features_21', 'pre_logits'}


@pytest.fixture(scope='module')
def reference():
  """timm's network with random weights and BatchNorm statistics, and its Flax conversion."""
  torch.manual_seed(0)
  ref = timm_inception_v4.InceptionV4()
  # BatchNorm statistics from 128 positions per channel in the last blocks; with fewer the
  # network is worse conditioned and float32 alone moves its logits by up to 7e-05.
  calibration = torch.randn(8, 3, 187, 187, generator=torch.Generator().manual_seed(1))
  randomize(ref, calibration)  # BatchNorm statistics of this batch; weights from the seed above
  template = variable_shapes(InceptionV4(), (1, 75, 75, 3))
  variables, missing, unexpected = convert.torch_to_flax(ref.state_dict(), template, TORCH_RENAMES)
  assert missing == [] and unexpected == []
  return ref, variables


def test_parameters_and_multiply_adds_match_timm(reference):
  layers = analysis.count(InceptionV4(), (299, 299, 3), train=False)
  params = sum(l.params for l in layers)
  assert params == sum(p.numel() for p in reference[0].parameters()) == 42_679_816
  assert f'{params / 1e6:.2f}M' == '42.68M'  # timm's model card
  # timm's benchmark table says 12.28 GMACs at 299; we count 12.254 G (0.2% less). We
  # count only conv and dense multiply-adds; timm's profiler also charges element-wise
  # layers (the BatchNorms alone are 15.1 M per image, ReLUs as many, pools, concats).
  macs = sum(l.macs for l in layers)
  assert macs == 12_253_974_624
  assert abs(macs / 12.28e9 - 1) < 0.01
  shapes = {l.name: l.output_shape for l in layers}
  assert shapes['features_2/conv'] == (147, 147, 64)
  assert shapes['features_5/conv/conv'] == (35, 35, 192)  # + the pool's 192 = 384
  assert shapes['features_17/branch3_1/conv'] == (17, 17, 128)
  assert shapes['features_21/branch2_3b/conv'] == (8, 8, 256)
  assert shapes['last_linear'] == (1000,)


@pytest.mark.parametrize('height, width', [(75, 75), (99, 83)])
def test_logits_match_timm_reference(reference, height, width):
  ref, variables = reference
  x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height))
  with torch.no_grad():
    want = ref(x).numpy()
  model = InceptionV4()
  apply = cheap_jit(functools.partial(model.apply, train=False))
  got, features = apply(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
  # Measured 2.5e-05 (75x75) and 5.1e-05 (99x83), logits of std 0.6. That is float32's floor
  # for this random network: a float64 run of the reference is about as far from either
  # side (torch: 1.8e-05, 2.9e-05). Rounding errors grow about 2x every three blocks here.
  assert np.abs(np.asarray(got) - want).max() < 1e-4
  assert set(features) == FEATURES and features['features_21'].shape[1:] == (1, 1, 1536)


def test_convert_state_dict_reads_the_class_count(reference):
  ref, variables = reference
  state_dict = dict(ref.state_dict())
  # As an older TF port: 1001 classes, background first.
  state_dict['last_linear.weight'], state_dict['last_linear.bias'] = torch.ones(1001, 1536), torch.zeros(1001)
  model, converted, missing, unexpected = convert.convert_state_dict('inception_v4', state_dict, source='timm')
  assert (model.num_classes, missing, unexpected) == (1001, [], [])
  assert converted['params']['last_linear']['kernel'].shape == (1536, 1001)
  var = lambda v: v['batch_stats']['features_9']['branch3_1']['bn']['var']
  np.testing.assert_array_equal(var(converted), var(variables))


def test_training_features_options_and_dtypes():
  model = InceptionV4(num_classes=0, global_pool='avgmax', drop_rate=0.2, dtype=jnp.bfloat16)
  variables = variable_shapes(model, (1, 75, 75, 3))
  x = jnp.zeros((2, 75, 91, 3))
  train_apply = functools.partial(
      model.apply, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(0)}
  )
  (logits, features), _ = jax.eval_shape(train_apply, variables, x)
  assert set(features) == FEATURES  # as in evaluation (test_logits_match_timm_reference)
  assert logits.shape == (2, 1536)  # num_classes=0: the pooled features
  assert logits.dtype == jnp.float32 and features['features_9'].dtype == jnp.bfloat16
  stored = flax.traverse_util.flatten_dict(variables)
  assert {v.dtype for v in stored.values()} == {jnp.dtype(jnp.float32)}
  assert ('batch_stats', 'features_0', 'bn', 'mean') in stored
  assert not any('last_linear' in path for path in stored)


def test_global_pools_match_timm():
  # timm's 'avgmax' is the mean of the two pools, not their concatenation ('catavgmax').
  x = torch.randn(2, 5, 9, 7)
  for kind in ('avg', 'max', 'avgmax'):
    got = pooling.global_pool(jnp.asarray(x.numpy().transpose(0, 2, 3, 1)), kind)
    np.testing.assert_allclose(got, timm_inception_v4.global_pool(x, kind).numpy(), atol=1e-6)
