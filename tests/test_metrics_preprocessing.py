"""The three FID preprocessings (inception_jax.metrics.preprocessing) against their tools' code:
TensorFlow's own ResizeBilinear for 'tf1', clean-fid 0.1.35's resizer restated line by line for
'clean' (clean-fid needs torchvision, which does not install beside this torch), and the
extraction step's previous expression for 'pytorch_fid'."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from inception_jax import preprocess
from inception_jax.metrics import preprocessing

SHAPES = [(32, 32), (64, 48), (256, 256), (300, 300), (299, 299), (512, 512)]


def pixels(shape, seed=0):
  return np.random.default_rng(seed).uniform(0, 255, (2, *shape, 3)).astype(np.float32)


def clean_fid_resize(x):
  """clean-fid 0.1.35 `cleanfid/resize.py` L49-57, `make_resizer('PIL', False, 'bicubic', (299, 299))`
  (resize.py L13, mode 'clean'), as written there; x: an HxWx3 array as `ResizeDataset` reads it
  (utils.py L44-45: uint8 from PIL's convert('RGB'))."""
  output_size = (299, 299)
  s1, s2 = output_size

  def resize_single_channel(x_np):
    img = Image.fromarray(x_np.astype(np.float32), mode='F')
    img = img.resize(output_size, resample=Image.BICUBIC)
    return np.asarray(img).clip(0, 255).reshape(s2, s1, 1)

  x = [resize_single_channel(x[:, :, idx]) for idx in range(3)]
  x = np.concatenate(x, axis=2).astype(np.float32)
  return x


# tf1.


@pytest.mark.parametrize('shape', SHAPES)
def test_tf1_resize_is_tensorflows_resize_bilinear(shape):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  x = pixels(shape)
  theirs = tf.compat.v1.image.resize_bilinear(x, (299, 299), align_corners=False, half_pixel_centers=False).numpy()
  ours = np.asarray(jax.jit(preprocessing.resize_bilinear_tf1, static_argnums=1)(x, 299))
  assert ours.shape == (2, 299, 299, 3) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
  # Op by op (no fusion, so no fused multiply-add): TF's arithmetic, in TF's order, bit for bit.
  np.testing.assert_array_equal(np.asarray(preprocessing.resize_bilinear_tf1(jnp.asarray(x), 299)), theirs)
  if shape != (299, 299):  # the half-pixel (pytorch_fid) resize samples elsewhere: the test discriminates
    half_pixel = 255 * np.asarray(preprocess.resize_bilinear(x / 255, 299))
    assert np.abs(half_pixel - theirs).max() > 0.5
  else:
    np.testing.assert_array_equal(ours, x)  # scale 1: the identity


def test_tf1_resize_takes_other_sizes_and_non_square_outputs():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  x = pixels((40, 30))
  theirs = tf.compat.v1.image.resize_bilinear(x, (17, 61), align_corners=False).numpy()
  np.testing.assert_allclose(np.asarray(preprocessing.resize_bilinear_tf1(x, (17, 61))), theirs, rtol=0, atol=1e-4)


# clean.


@pytest.mark.parametrize('shape', [(32, 32), (64, 48), (299, 299), (400, 300)])
def test_clean_resize_is_clean_fids_bit_for_bit(shape):
  images = np.random.default_rng(1).integers(0, 256, (3, *shape, 3), np.uint8)
  ours = preprocessing.resize_clean(images)
  assert ours.shape == (3, 299, 299, 3) and ours.dtype == np.float32
  for image, out in zip(images, ours):
    np.testing.assert_array_equal(out, clean_fid_resize(image))
    np.testing.assert_array_equal(out, preprocessing.resize_clean_image(image))
  np.testing.assert_array_equal(preprocessing.resize_clean(images, num_threads=1), ours)
  if shape == (299, 299):
    np.testing.assert_array_equal(ours, images)  # PIL's resize to its own size is a copy


def test_clean_resize_is_float_bicubic_clipped_not_quantized():
  # A checkerboard upsampled by bicubic overshoots both ends: clipped to [0, 255], not rounded.
  board = (np.indices((8, 10)).sum(0) % 2 * 255).astype(np.uint8)
  out = preprocessing.resize_clean_image(np.repeat(board[..., None], 3, axis=-1))
  assert out.min() == 0 and out.max() == 255
  assert np.any(out != np.round(out))
  # Floats in [0, 1] are the same pixels times 255.
  image = np.random.default_rng(2).integers(0, 256, (20, 24, 3), np.uint8)
  floats = image.astype(np.float32) / 255
  np.testing.assert_array_equal(preprocessing.resize_clean_image(floats), clean_fid_resize(floats * np.float32(255)))


def test_clean_resize_refuses_images_without_three_channels():
  with pytest.raises(ValueError, match=r'^clean-fid resizes HxWx3 images; got shape \(20, 24, 1\)\.$'):
    preprocessing.resize_clean(np.zeros((2, 20, 24, 1), np.uint8))
  with pytest.raises(ValueError, match=r'NHWC'):
    preprocessing.resize_clean(np.zeros((20, 24, 3), np.uint8))


# network_inputs: the device side.


def test_pytorch_fid_inputs_are_the_previous_steps_bit_for_bit():
  u8 = np.random.default_rng(3).integers(0, 256, (2, 40, 48, 3), np.uint8)
  # The extraction step before preprocess existed (metrics/features.py, `step`): uint8 / 255 under
  # jit (XLA's division by 255, not numpy's), then fid_inputs, or 2x - 1 without the resize.
  before = jax.jit(lambda u: preprocess.fid_inputs(u.astype(jnp.float32) / 255))(u8)
  ours = jax.jit(lambda u: preprocessing.network_inputs(u, 'pytorch_fid'))(u8)
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(before))
  np.testing.assert_allclose(np.asarray(ours), preprocess.fid_inputs(u8.astype(np.float32) / 255), rtol=0, atol=1e-6)
  floats = u8.astype(np.float32) / 255
  np.testing.assert_array_equal(
      np.asarray(jax.jit(lambda x: preprocessing.network_inputs(x, 'pytorch_fid'))(floats)),
      np.asarray(jax.jit(preprocess.fid_inputs)(floats)),
  )
  unresized = preprocessing.network_inputs(floats, 'pytorch_fid', resize=False)
  np.testing.assert_array_equal(np.asarray(unresized), 2 * floats - 1)


def test_tf1_inputs_are_tf1_resized_then_centred_on_128():
  for value, expected in ((0, -1.0), (128, 0.0), (255, 127 / 128), (37, -91 / 128)):
    image = np.full((1, 40, 30, 3), value, np.uint8)
    out = np.asarray(jax.jit(lambda u: preprocessing.network_inputs(u, 'tf1'))(image))
    assert out.shape == (1, 299, 299, 3)
    np.testing.assert_array_equal(out, np.full_like(out, expected))
  # Floats in [0, 1] are pixels / 255.
  np.testing.assert_allclose(preprocessing.network_inputs(np.full((1, 8, 8, 3), 0.5, np.float32), 'tf1'), -0.5 / 128)
  x = pixels((40, 30))
  np.testing.assert_array_equal(
      np.asarray(preprocessing.network_inputs(x / 255, 'tf1', resize=False)), (x / np.float32(255) * 255 - 128) / 128
  )
  u8 = x.astype(np.uint8)
  np.testing.assert_array_equal(
      np.asarray(jax.jit(lambda u: preprocessing.network_inputs(u, 'tf1'))(u8)),
      np.asarray(jax.jit(lambda u: (preprocessing.resize_bilinear_tf1(u.astype(jnp.float32), 299) - 128) / 128)(u8)),
  )


def test_clean_inputs_are_the_host_resize_centred_on_128():
  images = np.random.default_rng(4).integers(0, 256, (2, 33, 47, 3), np.uint8)
  prepared = preprocessing.resize_clean(images)
  out = np.asarray(jax.jit(lambda x: preprocessing.network_inputs(x, 'clean'))(prepared))
  np.testing.assert_array_equal(out, (prepared - 128) / 128)  # inception_torchscript.py L52-53
  with pytest.raises(ValueError) as error:
    preprocessing.network_inputs(images, 'clean')
  assert str(error.value) == (
      "preprocess='clean' takes the 299x299 float32 images resize_clean makes on the host "
      '(Extractor.prepare); got 33x47.'
  )


def test_an_unknown_preprocessing_is_a_one_line_error():
  message = "preprocess must be one of pytorch_fid, tf1, clean; got 'tf2'."
  for call in (lambda: preprocessing.check('tf2'), lambda: preprocessing.network_inputs(np.zeros((1, 8, 8, 3)), 'tf2')):
    with pytest.raises(ValueError) as error:
      call()
    assert str(error.value) == message
  assert preprocessing.PREPROCESSING == ('pytorch_fid', 'tf1', 'clean')
  assert preprocessing.check('clean') == 'clean'
  with pytest.raises(TypeError, match=r'^images must be uint8, or floats in \[0, 1\]; got int32\.$'):
    preprocessing.network_inputs(np.zeros((1, 8, 8, 3), np.int32), 'tf1')
