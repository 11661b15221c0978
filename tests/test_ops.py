"""The CPU ('matmul') formulations compute XLA's functions and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax.models import ops


def value_and_vjp(f, *args, cotangent):
  """f(*args) and its cotangent's pullback to args, in one compiled program."""

  @jax.jit
  def run(*args):
    y, pullback = jax.vjp(f, *args)
    return y, pullback(cotangent)

  return run(*args)


@pytest.mark.parametrize(
    'kernel, padding, strides',
    [
        ((1, 1), 'SAME', (1, 1)),
        ((3, 3), 'SAME', (1, 1)),
        ((5, 5), 'SAME', (1, 1)),
        ((1, 7), 'SAME', (1, 1)),
        ((2, 2), 'SAME', (1, 1)),
        ((3, 3), 'VALID', (1, 1)),
        ((7, 7), ((3, 3), (3, 3)), (1, 1)),
        ((3, 3), 'VALID', (2, 2)),
        ((7, 7), ((3, 3), (3, 3)), (2, 2)),
        ((3, 3), 'SAME', (2, 2)),
        ((1, 1), 'SAME', (2, 2)),
        ((3, 1), 'VALID', (1, 2)),
    ],
)
def test_conv2d_formulations_agree_with_gradients(kernel, padding, strides):
  rng = np.random.default_rng(0)
  x, w = rng.standard_normal((2, 9, 11, 5), np.float32), rng.standard_normal((*kernel, 5, 4), np.float32)
  g = rng.standard_normal(jax.eval_shape(lambda: ops.conv2d(x, w, strides, padding, impl='xla')).shape, np.float32)

  def values_and_grads(impl):
    return value_and_vjp(lambda x, w: ops.conv2d(x, w, strides, padding, impl=impl), x, w, cotangent=g)

  (y_xla, grads_xla), (y_mm, grads_mm) = values_and_grads('xla'), values_and_grads('matmul')
  np.testing.assert_allclose(y_mm, y_xla, rtol=1e-5, atol=1e-5)
  for a, b in zip(grads_mm, grads_xla):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    'window, stride, pads, size',
    [
        (3, 1, ((1, 1), (1, 1)), (8, 7)),  # the Inception block's pool tower
        (3, 2, ((1, 1), (1, 1)), (9, 8)),  # GoogLeNet (paper layout)
        (3, 2, ((0, 1), (0, 0)), (8, 7)),  # torch's ceil mode: the last window overhangs
        (2, 2, ((0, 1), (0, 1)), (7, 7)),  # torchvision GoogLeNet's maxpool4
        (3, 2, ((0, 0), (0, 0)), (9, 10)),  # Inception v3/v4 reductions
        (3, 3, ((0, 0), (0, 0)), (9, 9)),
    ],  # no overlap
)
def test_max_pool_gradient_matches_xla_with_ties(window, stride, pads, size):
  # After a ReLU most inputs are 0: ties everywhere. XLA's select-and-scatter gives each
  # window's cotangent to its first maximal element; ours must do the same, bit for bit.
  rng = np.random.default_rng(0)
  x = np.maximum(rng.standard_normal((2, *size, 3), np.float32) - 0.3, 0)
  x[0, 2:5, 2:5, 0] = 1.0  # a plateau of equal maxima
  shape = jax.eval_shape(lambda: ops.max_pool(x, window, stride, pads, impl='xla')).shape
  # Small integer cotangents: sums are exact whatever order the windows add them in.
  g = rng.integers(-3, 4, shape).astype(np.float32)
  results = {
      impl: value_and_vjp(lambda x: ops.max_pool(x, window, stride, pads, impl=impl), x, cotangent=g)
      for impl in ('xla', 'matmul')
  }
  np.testing.assert_array_equal(results['matmul'][0], results['xla'][0])
  np.testing.assert_array_equal(results['matmul'][1][0], results['xla'][1][0])


def test_unknown_impl_is_rejected():
  with pytest.raises(ValueError, match="'xla' or 'matmul'"):
    ops.conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 1, 1, 1)), impl='cudnn')
  with pytest.raises(ValueError, match="max_pool impl must be 'xla' or 'matmul'"):
    ops.max_pool(jnp.zeros((1, 4, 4, 1)), 3, 1, ((1, 1), (1, 1)), impl='cudnn')
