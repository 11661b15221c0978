import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax import models
from model_utils import random_variables, variable_shapes


def param_count(model, shape):
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)), train=False))
  return sum(x.size for x in jax.tree.leaves(variables['params']))


def test_seed_network_parameter_count():
  # Seed 000: module 1 17,664 + module 2 55,584 + fc1 200,704*700+700 + fc2 700*10+10.
  model = models.create_model('mnist_inception')
  assert param_count(model, (28, 28, 1)) == 140_573_758


def test_seed_network_outputs_and_fixed_feature_keys():
  model = models.create_model('mnist_inception', widths=(4, 8), hidden_units=32)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 28, 28, 1))
  variables = random_variables(variable_shapes(model, x.shape))  # model.init compiles slowly on CPU
  apply = jax.jit(model.apply, static_argnames='train')
  logits, features = apply(variables, x, train=False)
  train_logits, train_features = apply(variables, x, train=True, rngs={'dropout': jax.random.PRNGKey(2)})
  assert logits.shape == train_logits.shape == (3, 10) and logits.dtype == jnp.float32
  assert list(features) == list(train_features) == ['inception1', 'inception2', 'pre_logits']
  assert features['inception1'].shape == (3, 28, 28, 16)
  assert features['inception2'].shape == (3, 28, 28, 32)
  # ReLU follows each concatenation.
  assert float(features['inception1'].min()) >= 0.0
  # Dropout is active in training only, and its key comes from the caller.
  assert not np.allclose(logits, train_logits)
  again, _ = apply(variables, x, train=True, rngs={'dropout': jax.random.PRNGKey(2)})
  np.testing.assert_array_equal(train_logits, again)


def test_seed_block_activation_placement():
  # Towers end in bare convolutions and one ReLU follows the concatenation; the 1x1
  # reductions have their own ReLU. Compare with a hand-written block.
  block = models.InceptionBlock(4, 3, 5, 2, 6, 7, relu_after_concat=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 3))
  params = random_variables(jax.eval_shape(block.init, jax.random.PRNGKey(1), x))['params']  # non-zero biases too
  y = jax.jit(block.apply)({'params': params}, x)

  def conv(name, h):
    p = params[name]['conv']
    out = jax.lax.conv_general_dilated(h, p['kernel'], (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return out + p['bias']

  @jax.jit
  def reference(params, x):
    return jax.nn.relu(
        jnp.concatenate(
            [
                conv('branch1x1', x),
                conv('branch3x3', jax.nn.relu(conv('branch3x3_reduce', x))),
                conv('branch5x5', jax.nn.relu(conv('branch5x5_reduce', x))),
                conv(
                    'branch_pool', jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1), 'SAME')
                ),
            ],
            -1,
        )
    )

  assert y.shape == (2, 9, 9, 4 + 5 + 6 + 7)
  np.testing.assert_allclose(y, reference(params, x), rtol=1e-5, atol=1e-5)


def test_naive_block_has_no_reductions_and_passes_pooled_input():
  block = models.InceptionBlock(64, 96, 128, 16, 32, 32, reduce=False)
  x = jnp.ones((1, 28, 28, 192))
  variables = jax.eval_shape(block.init, jax.random.PRNGKey(0), x)
  assert set(variables['params']) == {'branch1x1', 'branch3x3', 'branch5x5'}
  assert variables['params']['branch5x5']['conv']['kernel'].shape == (5, 5, 192, 32)
  assert jax.eval_shape(block.apply, variables, x).shape == (1, 28, 28, 64 + 128 + 32 + 192)


def test_block_with_batchnorm_uses_running_average_in_eval():
  norm = functools.partial(models.ConvBlock, norm=functools.partial(nn_batchnorm(), use_running_average=True))
  block = models.InceptionBlock(8, 4, 8, 4, 8, 8, conv=norm)
  variables = jax.eval_shape(block.init, jax.random.PRNGKey(0), jnp.ones((2, 7, 7, 5)))
  assert 'batch_stats' in variables
  assert 'bias' not in variables['params']['branch1x1']['conv']  # BatchNorm carries the shift
  assert set(variables['params']['branch1x1']) == {'conv', 'bn'}


def nn_batchnorm():
  import flax.linen as nn

  return functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-3)


def test_registry_errors_name_the_choices():
  assert 'mnist_inception' in models.list_models()
  with pytest.raises(ValueError, match='Unknown model .*Known models: .*mnist_inception'):
    models.create_model('inception_v9')
  with pytest.raises(ValueError, match="no field.*'widht'"):
    models.create_model('mnist_inception', widht=3)
