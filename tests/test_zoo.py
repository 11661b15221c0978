"""What every registered model promises (inception_jax.models' docstring), checked for each:
output structure and fixed feature keys, float32 parameters and logits under bfloat16
compute, clear errors for bad images, and a gradient for every parameter. Traced, never
compiled, so the whole zoo takes seconds."""

import functools
import sys

import jax
import jax.extend.core
import jax.numpy as jnp
import pytest

from inception_jax import models
from model_utils import abstract_apply, variable_shapes

NAMES = models.list_models()


@functools.cache
def model_and_shapes(name, **fields):
  model = models.create_model(name, **fields)
  size = min_size(model) or model.image_size
  return model, variable_shapes(model, (1, size, size, model.in_channels))


def min_size(model):
  """The smallest input the model allows (None: it takes one size only)."""
  return getattr(sys.modules[type(model).__module__], 'MIN_SIZE', None)


@pytest.mark.parametrize('name', NAMES)
def test_logits_and_feature_keys_fixed_by_the_configuration(name):
  model, variables = model_and_shapes(name)
  small = min_size(model) or model.image_size
  keys = None
  for size, train in {(small, False), (small, True), (model.image_size, False)}:
    logits, features = abstract_apply(model, variables, (2, size, size, model.in_channels), train=train)
    assert logits.shape == (2, model.num_classes) and logits.dtype == jnp.float32, (size, train)
    assert keys in (None, list(features)), (size, train)  # never depends on train or the input size
    keys = list(features)
  assert all(features[k].shape == logits.shape for k in keys if k.startswith('aux'))


@pytest.mark.parametrize('name', NAMES)
def test_bfloat16_compute_keeps_parameters_statistics_and_logits_float32(name):
  model, variables = model_and_shapes(name, dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  size = min_size(model) or model.image_size
  logits, features = abstract_apply(model, variables, (1, size, size, model.in_channels))
  assert logits.dtype == jnp.float32
  assert jnp.dtype(jnp.bfloat16) in {f.dtype for f in features.values()}  # the compute did run in bfloat16


def bad_images(name):
  model, _ = model_and_shapes(name)
  c, size, small = model.in_channels, model.image_size, min_size(model)
  other_c = 1 if c == 3 else 3
  cases = [
      ((size, size, c), 'Add a batch axis'),
      ((1, size, size, other_c), f'expects {c} input channel'),
      ((1, c, size, size), 'NHWC'),
  ]
  if small:
    cases.append(((1, small - 1, size, c), f'at least {small}x{small}'))
  else:
    cases.append(((1, size + 4, size + 4, c), f'takes {size}x{size} images only'))
  return [(name, shape, message) for shape, message in cases]


@pytest.mark.parametrize('name, shape, message', [case for name in NAMES for case in bad_images(name)])
def test_bad_images_get_one_clear_error(name, shape, message):
  model, variables = model_and_shapes(name)
  with pytest.raises(ValueError, match=message):
    abstract_apply(model, variables, shape)


@pytest.mark.parametrize('name', NAMES)
def test_every_parameter_gets_a_gradient(name):
  """In training, every parameter (aux heads included) reaches the loss: no symbolic zero
  in the traced gradient."""
  model, variables = model_and_shapes(name)
  size = min_size(model) or model.image_size
  x = jnp.zeros((2, size, size, model.in_channels))

  def loss(params, others):
    (logits, features), _ = model.apply(
        {**others, 'params': params}, x, train=True, rngs={'dropout': jax.random.PRNGKey(0)}, mutable=['batch_stats']
    )
    return logits.sum() + sum(v.sum() for k, v in features.items() if k.startswith('aux'))

  params = variables['params']
  others = {k: v for k, v in variables.items() if k != 'params'}
  closed = jax.make_jaxpr(jax.grad(loss))(params, others)
  producers = {id(v): eqn for eqn in closed.jaxpr.eqns for v in eqn.outvars}

  def is_zero(var):
    if isinstance(var, jax.extend.core.Literal):
      return True
    eqn = producers.get(id(var))
    return (
        eqn is not None
        and eqn.primitive.name == 'broadcast_in_dim'
        and isinstance(eqn.invars[0], jax.extend.core.Literal)
    )

  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  without = [path for path, var in zip(paths, closed.jaxpr.outvars) if is_zero(var)]
  assert not without, without
