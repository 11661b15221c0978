"""Pooling with PyTorch's semantics, window by window, against torch itself."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inception_jax.models import pooling
from scripts.torch_refs import nchw


def nhwc(t):
  return t.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize('window, stride, padding', [(3, 2, 0), (2, 2, 0), (3, 1, 1), (5, 3, 0)])
@pytest.mark.parametrize('ceil_mode', [False, True])
def test_max_pool_matches_torch_at_every_small_size(window, stride, padding, ceil_mode):
  # One program per size (op by op, each of its operations would compile alone).
  max_pool = jax.jit(pooling.max_pool, static_argnums=(1, 2, 3), static_argnames='ceil_mode')
  for size in range(1, 9):
    x = np.random.default_rng(size).normal(size=(1, size, size + 1, 2)).astype(np.float32)
    try:
      expected = nhwc(F.max_pool2d(nchw(x), window, stride, padding, ceil_mode=ceil_mode))
    except RuntimeError:
      with pytest.raises(ValueError, match='does not fit'):
        max_pool(x, window, stride, padding, ceil_mode=ceil_mode)
      continue
    np.testing.assert_array_equal(
        max_pool(x, window, stride, padding, ceil_mode=ceil_mode), expected, err_msg=f'{size}'
    )


@pytest.mark.parametrize('count_include_pad', [True, False])
@pytest.mark.parametrize('window, stride, padding', [(3, 1, 1), (5, 3, 0), (3, 2, 1)])
def test_avg_pool_matches_torch(window, stride, padding, count_include_pad):
  x = np.random.default_rng(0).normal(size=(2, 11, 8, 3)).astype(np.float32)
  expected = nhwc(F.avg_pool2d(nchw(x), window, stride, padding, count_include_pad=count_include_pad))
  np.testing.assert_allclose(
      pooling.avg_pool(x, window, stride, padding, count_include_pad=count_include_pad), expected, atol=1e-6
  )


@pytest.mark.parametrize('size', [(1, 1), (3, 5), (4, 4), (14, 14), (17, 9)])
def test_adaptive_avg_pool_matches_torch(size):
  x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
  expected = nhwc(F.adaptive_avg_pool2d(nchw(x), (4, 4)))
  np.testing.assert_allclose(pooling.adaptive_avg_pool(x, 4), expected, atol=1e-6)


@pytest.mark.parametrize('count_include_pad', [True, False])
def test_avg_pool_gradient_under_jit(count_include_pad):
  # Training Inception v3 differentiates avg_pool inside jit; the gradient of a sum of
  # averages is each input's number of windows over their sizes.
  x = jnp.ones((1, 4, 4, 1))
  grad = jax.jit(jax.grad(lambda x: pooling.avg_pool(x, 3, 1, 1, count_include_pad=count_include_pad).sum()))(x)
  ones = torch.ones(1, 1, 4, 4, requires_grad=True)
  F.avg_pool2d(ones, 3, 1, 1, count_include_pad=count_include_pad).sum().backward()
  np.testing.assert_allclose(grad, nhwc(ones.grad), rtol=1e-6)
