"""What each FID tool does to an image before the 2015 Inception graph, as `preprocess='...'`.

    preprocess     tools                              resize to 299x299                   scaling
    'pytorch_fid'  pytorch-fid 0.3.0 (default)        half-pixel bilinear, on the device  [0, 1] -> 2x - 1
    'tf1'          ADM evaluator, TTUR, torch-        TF1 ResizeBilinear (no half-pixel   [0, 255] ->
                     fidelity 'inception-v3-compat'     centres), on the device             (x - 128) / 128
    'clean'        clean-fid 0.1.35, mode 'clean'     PIL bicubic per channel as a float  [0, 255] ->
                                                        image, clipped, on the host         (x - 128) / 128

References: pytorch-fid `inception.py` (`InceptionV3.forward`: `F.interpolate(x, size=(299, 299),
mode='bilinear', align_corners=False)`, then `2 * x - 1`). torch-fidelity 0.4.0
`interpolate_compat_tensorflow.py` L83-93 (scale = in / out) and L115-138 (`resample_manually`),
`feature_extractor_inceptionv3.py` L103-119 (uint8 -> float32 -> resize -> (x - 128) / 128, "bit-exact"
with the graph's (x - 128) * 0.0078125); the ADM evaluator (guided-diffusion `evaluations/evaluator.py`
L153, `batch.astype(np.float32)`, fed to the graph's own ResizeBilinear, L586-594). clean-fid
`resize.py` L49-57 (`make_resizer('PIL', False, 'bicubic', (299, 299))`, L13), `utils.py` L50-56 (its
float32 output fed as is) and `inception_torchscript.py` L49-54 (299x299 asserted, (x - 128) / 128).

Inputs, as elsewhere in `metrics`: NHWC uint8 pixel values, or floats in [0, 1]. 'tf1' and
'clean' scale floats by 255 first; 'clean' resizes on the host (`resize_clean`, which
`Extractor.prepare` calls) and the device step then receives its float32 output in [0, 255].
"""

from __future__ import annotations

import concurrent.futures
import os

import jax.numpy as jnp
import numpy as np
from PIL import Image

from inception_jax import preprocess as preprocess_lib

PREPROCESSING = ('pytorch_fid', 'tf1', 'clean')
SIZE = preprocess_lib.FID_SIZE  # 299


def check(preprocess: str) -> str:
  """`preprocess` if it names one of PREPROCESSING, else a ValueError."""
  if preprocess not in PREPROCESSING:
    raise ValueError(f'preprocess must be one of {", ".join(PREPROCESSING)}; got {preprocess!r}.')
  return preprocess


# tf1: TensorFlow 1's ResizeBilinear (align_corners=False, half_pixel_centers=False).


def _tf1_grid(in_size: int, out_size: int):
  """One axis's source rows: interpolate_compat_tensorflow.py L93 and L116-120, in float32 as
  TensorFlow's kernel computes them (scale = float(in) / out, source = float(dst) * scale)."""
  scale = np.float32(in_size) / np.float32(out_size)
  source = np.arange(out_size, dtype=np.float32) * scale
  lo = np.floor(source).astype(np.int32)  # torch-fidelity's .long(): source >= 0
  hi = np.minimum(lo + 1, in_size - 1)  # TF takes ceil(source): the same wherever the weight is not 0
  return lo, hi, source - lo.astype(np.float32)


def resize_bilinear_tf1(x, size: int | tuple[int, int]):
  """TensorFlow 1's `tf.image.resize_bilinear(x, size, align_corners=False)` on NHWC float32:
  torch-fidelity 0.4.0's `resample_manually` (interpolate_compat_tensorflow.py L115-138), the
  same gathers and the same float32 arithmetic (along x on both rows, then along y). The grid
  is static, so this is four gathers and three lerps under jit on any backend."""
  h, w = (size, size) if isinstance(size, int) else size
  y_lo, y_hi, dy = _tf1_grid(x.shape[1], h)
  x_lo, x_hi, dx = _tf1_grid(x.shape[2], w)
  top, bottom = jnp.take(x, y_lo, axis=1), jnp.take(x, y_hi, axis=1)
  dx, dy = dx[None, None, :, None], dy[None, :, None, None]
  in_00, in_01 = jnp.take(top, x_lo, axis=2), jnp.take(top, x_hi, axis=2)
  in_10, in_11 = jnp.take(bottom, x_lo, axis=2), jnp.take(bottom, x_hi, axis=2)
  # Op by op this is TF's CPU kernel bit for bit. Under jit XLA contracts each lerp into a fused
  # multiply-add (on CPU; nvcc's default would do the same to TF's CUDA kernel): within 3 ulp of
  # TF's CPU kernel (4.6e-5 on [0, 255]), which rounds the product first.
  in_0 = in_00 + (in_01 - in_00) * dx
  in_1 = in_10 + (in_11 - in_10) * dx
  return in_0 + (in_1 - in_0) * dy


# clean: clean-fid's PIL bicubic, on the host.


def _host_pixels(image: np.ndarray) -> np.ndarray:
  if image.dtype == np.uint8:
    return image.astype(np.float32)  # resize.py L51: `x_np.astype(np.float32)`, values 0..255
  if jnp.issubdtype(image.dtype, jnp.floating):  # bfloat16 too
    return image.astype(np.float32) * np.float32(255)
  raise TypeError(f'images must be uint8, or floats in [0, 1]; got {image.dtype}.')


def resize_clean_image(image: np.ndarray) -> np.ndarray:
  """clean-fid's 'clean' resize of one HWC image (uint8, or floats in [0, 1]) -> float32
  299x299x3 in [0, 255] (resize.py L49-57): each channel a float32 PIL image, bicubic to
  299x299, clipped to [0, 255], not quantized."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'clean-fid resizes HxWx3 images; got shape {image.shape}.')
  pixels = _host_pixels(image)
  channels = []
  for c in range(3):
    # clean-fid writes Image.fromarray(x, mode='F'): a 2-D float32 array is mode 'F' without it
    # (the same bytes), and Pillow 11.3 deprecated the argument (12.0: only to change types).
    channel = Image.fromarray(np.ascontiguousarray(pixels[:, :, c]))
    channel = channel.resize((SIZE, SIZE), resample=Image.BICUBIC)
    channels.append(np.asarray(channel).clip(0, 255))
  return np.stack(channels, axis=-1).astype(np.float32)


def resize_clean(images: np.ndarray, num_threads: int | None = None) -> np.ndarray:
  """`resize_clean_image` over an NHWC batch -> float32 (N, 299, 299, 3) in [0, 255], the
  images spread over `num_threads` threads (default: every core; PIL's resize drops the GIL)."""
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f'resize_clean takes NHWC images; got shape {images.shape}.')
  out = np.empty((images.shape[0], SIZE, SIZE, 3), np.float32)

  def one(i):
    out[i] = resize_clean_image(images[i])

  num_threads = min(num_threads or os.cpu_count() or 1, len(images))
  if num_threads <= 1:
    for i in range(len(images)):
      one(i)
  else:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      list(pool.map(one, range(len(images))))  # list(): re-raises a worker's error
  return out


# The device side, inside the jitted extraction step.


def network_inputs(images, preprocess: str, resize: bool = True):
  """The FID Inception's NHWC float32 input from a batch, traceable under jit.

  `images`: uint8 pixel values, or floats in [0, 1]; for 'clean', what `resize_clean` returned
  (float32 in [0, 255], 299x299; uint8 at 299x299 is the same). `resize=False` skips the
  device resize ('pytorch_fid', 'tf1'); 'clean' is resized on the host, always to 299x299.
  """
  check(preprocess)
  if preprocess == 'pytorch_fid':
    # The expression the extraction step has always used: uint8 results stay bit for bit.
    if images.dtype == jnp.uint8:
      x = images.astype(jnp.float32) / 255
    elif jnp.issubdtype(images.dtype, jnp.floating):
      x = images.astype(jnp.float32)
    else:
      raise TypeError(f'images must be uint8, or floats in [0, 1]; got {images.dtype}.')
    return preprocess_lib.fid_inputs(x) if resize else 2 * x - 1
  if preprocess == 'tf1':
    if images.dtype == jnp.uint8:
      x = images.astype(jnp.float32)
    elif jnp.issubdtype(images.dtype, jnp.floating):
      x = images.astype(jnp.float32) * 255
    else:
      raise TypeError(f'images must be uint8, or floats in [0, 1]; got {images.dtype}.')
    if resize:
      x = resize_bilinear_tf1(x, SIZE)
    return (x - 128) / 128
  if tuple(images.shape[1:3]) != (SIZE, SIZE):
    raise ValueError(
        "preprocess='clean' takes the 299x299 float32 images resize_clean makes on the host "
        f'(Extractor.prepare); got {images.shape[1]}x{images.shape[2]}.'
    )
  return (images.astype(jnp.float32) - 128) / 128  # inception_torchscript.py L52-53
