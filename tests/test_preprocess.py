"""The input normalizations, side by side, against torchvision's and pytorch-fid's code."""

import numpy as np
import torch
from scripts.torch_refs import nchw
from scripts.torch_refs import torchvision_inception as tv_inception

from inception_jax import preprocess


def images(shape=(2, 9, 7, 3), seed=0):
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def test_imagenet_and_inception_normalization():
  x = images()
  np.testing.assert_allclose(
      preprocess.normalize_imagenet(x), (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], atol=1e-5
  )
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


def test_random_resized_crop_is_a_seeded_crop_of_the_requested_size():
  import tensorflow as tf

  image = tf.constant(np.random.default_rng(0).integers(0, 256, (40, 30, 1)), tf.uint8)
  crops = [preprocess.random_resized_crop(image, 17, tf.constant(seed)).numpy() for seed in ([1, 2], [1, 2], [3, 4])]
  assert crops[0].shape == (17, 17, 1) and crops[0].dtype == np.float32
  assert 0.0 <= crops[0].min() and crops[0].max() <= 1.0
  np.testing.assert_array_equal(crops[0], crops[1])  # a function of the seed
  assert not np.array_equal(crops[0], crops[2])
  # The whole image (area and aspect ratio 1) is just resized.
  whole = preprocess.random_resized_crop(
      image[:30], 15, tf.constant([5, 6]), area_range=(1.0, 1.0), aspect_ratio_range=(1.0, 1.0)
  )
  expected = tf.image.resize(tf.cast(image[:30], tf.float32) / 255, (15, 15), antialias=True)
  np.testing.assert_allclose(whole, expected, atol=1e-6)


def test_resize_center_crop_keeps_the_middle():
  import tensorflow as tf

  # 40 x 20, shorter side to 8 / 0.5 = 16 -> 32 x 16; the central 8 x 8 is rows 12-19, columns 4-11.
  image = np.zeros((40, 20, 3), np.uint8)
  image[10:30, 5:15] = 255
  out = preprocess.resize_center_crop(tf.constant(image), 8, crop_fraction=0.5).numpy()
  resized = tf.image.resize(tf.constant(image, tf.float32) / 255, (32, 16), antialias=True).numpy()
  assert out.shape == (8, 8, 3)
  np.testing.assert_allclose(out, resized[12:20, 4:12], atol=1e-6)


def test_an_image_whose_resize_would_be_over_the_pixel_budget_is_refused_before_resizing():
  # Issue 30, finding 13: a 196-byte 1x40000 PNG resized its shorter side to 256 and the longer to
  # 10,240,000: about 7.9 GB. The budget of a decoded image holds after the resize too.
  import pytest  # pylint: disable=g-import-not-at-top

  from inception_jax.models import hub  # pylint: disable=g-import-not-at-top

  transform = hub.pretrained_weights('inception_v3', 'torchvision').preprocessing.transform  # resize 342, crop 299
  with pytest.raises(ValueError, match=r'^a 1x40000 image resized to 342x13680000 is 4,678,560,000 pixels, over the'):
    transform(np.zeros((40000, 1), np.uint8))
  assert transform(np.zeros((4000, 100), np.uint8)).shape == (299, 299, 3)  # 342x13680: within the budget
