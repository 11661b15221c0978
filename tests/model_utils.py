"""Helpers for the big-network tests: shape-only tracing, random variables, cheap compiles."""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def variable_shapes(model, shape=(1, 64, 64, 3)):
  """The model's variables as ShapeDtypeStructs (traced, not computed)."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)


def abstract_apply(model, variables, shape, *, train=False):
  """Shapes and dtypes of (logits, features) for an input of `shape`."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  if train:
    apply = functools.partial(model.apply, train=True, rngs={'dropout': jax.random.PRNGKey(1)}, mutable=['batch_stats'])
    return jax.eval_shape(apply, variables, x)[0]
  return jax.eval_shape(functools.partial(model.apply, train=False), variables, x)


def param_count(variables):
  return sum(x.size for x in jax.tree.leaves(variables['params']))


def random_variables(shapes, seed=0):
  """Variables of `shapes` filled with small random numbers (model.init compiles slowly on CPU)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.05, s.shape), jnp.float32), shapes)


def cheap_jit(fn):
  """jax.jit, compiled without LLVM's optimizations: 2-3x quicker to compile a whole Inception
  network on CPU, about 2x slower to run, which suits a test that runs it once or twice."""
  jitted, compiled = jax.jit(fn), {}

  def call(*args):
    key = tuple((np.shape(a), str(getattr(a, 'dtype', type(a)))) for a in jax.tree.leaves(args))
    if key not in compiled:
      compiled[key] = jitted.lower(*args).compile(compiler_options={'xla_backend_optimization_level': 0})
    return compiled[key](*args)

  return call
