"""The input normalizations, side by side, against torchvision's and pytorch-fid's code."""

import numpy as np
import torch

from inception_jax import preprocess
from torch_refs import nchw
from torch_refs import torchvision_inception as tv_inception


def images(shape=(2, 9, 7, 3), seed=0):
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def test_imagenet_and_inception_normalization():
  x = images()
  np.testing.assert_allclose(preprocess.normalize_imagenet(x), (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], atol=1e-5)
  np.testing.assert_allclose(preprocess.normalize_inception(x), 2 * x - 1, atol=1e-6)
  assert float(preprocess.normalize_inception(np.zeros((1, 1, 1, 3), np.float32)).min()) == -1.0


def test_transform_input_turns_imagenet_normalization_into_inception_normalization():
  x = images()
  np.testing.assert_allclose(
      preprocess.transform_input(preprocess.normalize_imagenet(x)), preprocess.normalize_inception(x), atol=1e-6
  )


def test_transform_input_is_torchvisions():
  x = preprocess.normalize_imagenet(images())
  reference = tv_inception.Inception3(transform_input=True)
  expected = reference._transform_input(nchw(x)).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(preprocess.transform_input(x), expected, atol=1e-6)


def test_resize_and_fid_inputs_are_torchs_bilinear_interpolation():
  for shape, size in [((2, 9, 7, 3), (20, 31)), ((1, 64, 80, 3), (299, 299)), ((1, 50, 41, 3), (17, 13))]:
    x = images(shape)
    expected = torch.nn.functional.interpolate(nchw(x), size=size, mode='bilinear', align_corners=False)
    np.testing.assert_allclose(preprocess.resize_bilinear(x, size), expected.numpy().transpose(0, 2, 3, 1), atol=1e-5)
  x = images((1, 64, 80, 3))
  expected = 2 * torch.nn.functional.interpolate(nchw(x), size=(299, 299), mode='bilinear', align_corners=False) - 1
  np.testing.assert_allclose(preprocess.fid_inputs(x), expected.numpy().transpose(0, 2, 3, 1), atol=1e-5)
