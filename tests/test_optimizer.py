"""The optimizer built from a config: per-module learning-rate multipliers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import default
from inception_jax import train


def _config(**overrides):
  config = default.get_config()
  config.update(
      {'optimizer': 'adam', 'learning_rate': 1e-2, 'lr_schedule': 'constant', 'warmup_steps': 0, 'num_train_steps': 10}
      | overrides
  )
  return config


@pytest.mark.parametrize('optimizer', ['adam', 'sgd', 'rmsprop'])
def test_lr_multiplier_scales_only_its_module(optimizer):
  params = {'fc1': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}, 'conv': {'kernel': jnp.ones((2, 3))}}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  plain = train.create_optimizer(_config(optimizer=optimizer))
  scaled = train.create_optimizer(_config(optimizer=optimizer, lr_multipliers={'fc1': 0.1}))
  u_plain, _ = plain.update(grads, plain.init(params), params)
  u_scaled, _ = scaled.update(grads, scaled.init(params), params)
  for name in ('kernel', 'bias'):
    np.testing.assert_allclose(u_scaled['fc1'][name], 0.1 * u_plain['fc1'][name], rtol=1e-6)
  np.testing.assert_array_equal(u_scaled['conv']['kernel'], u_plain['conv']['kernel'])
  assert np.all(np.asarray(u_plain['conv']['kernel']) != 0)


def test_lr_multiplier_for_an_unknown_module_is_an_error():
  tx = train.create_optimizer(_config(lr_multipliers={'fc9': 0.1}))
  with pytest.raises(ValueError, match=r"'fc9'.*modules are \['conv', 'fc1'\]"):
    tx.init({'fc1': {'kernel': jnp.ones(2)}, 'conv': {'kernel': jnp.ones(2)}})
