"""Where images come from: a folder (read as pytorch-fid reads it), an .npz of images (arr_0, as
ADM's sample and reference batches), a TFDS split. Each is an `ImageSource`: `num_images`
uint8 images of `image_shape`, read a range at a time."""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import warnings
import zipfile
from typing import Protocol

import numpy as np
from absl import logging

from inception_jax import files, npz
from inception_jax.preprocess import MAX_IMAGE_PIXELS

IMAGE_EXTENSIONS = ('bmp', 'jpg', 'jpeg', 'pgm', 'png', 'ppm', 'tif', 'tiff', 'webp')  # pytorch-fid's
# Budgets, checked before anything is decoded: a 0.5 MB PNG of 13,000^2 pixels decodes to 507 MB,
# and pytorch-fid resizes every image to 299x299 anyway.
MAX_BATCH_PIXELS = 2**27  # 134 M pixels a batch: 384 MiB decoded, 1.5 GiB as float32 on the devices


# Image sources: a folder, an .npz of images, a TFDS split.


class ImageSource(Protocol):
  """`num_images` uint8 images of `image_shape` (H, W, 3), read in increasing ranges."""

  name: str
  num_images: int
  image_shape: tuple[int, int, int]

  def read(self, start: int, stop: int) -> np.ndarray:
    ...


@functools.cache
def _threads() -> concurrent.futures.ThreadPoolExecutor:
  return concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1))  # PIL decodes outside the GIL


class FolderImages:
  """The images of a folder, as pytorch-fid finds (`*.EXT` for its extensions, sorted) and reads them
  (PIL, `convert('RGB')`). Every header is read up front, so an unreadable file, one that is not
  a regular file (a FIFO would block) or a size that differs is reported before any work."""

  def __init__(self, path: str):
    import pathlib  # pylint: disable=g-import-not-at-top

    self.name = path
    folder = pathlib.Path(path)
    self.files = sorted(file for ext in IMAGE_EXTENSIONS for file in folder.glob(f'*.{ext}'))
    if not self.files:
      raise ValueError(f'{path} holds no images (pytorch-fid reads *.{", *.".join(IMAGE_EXTENSIONS)}).')
    from PIL import Image  # pylint: disable=g-import-not-at-top

    with warnings.catch_warnings():  # PIL's warning from 89 M pixels: check_pixels refuses them all
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      sizes = list(_threads().map(functools.partial(read_image, decode=False), self.files))
    for file, size in zip(self.files, sizes):
      if size != sizes[0]:
        raise ValueError(
            f'images of different sizes in {path}: {self.files[0].name} is {sizes[0][0]}x{sizes[0][1]}, '
            f'{file.name} is {size[0]}x{size[1]} (width x height); pytorch-fid needs one size per folder.'
        )
    self.num_images = len(self.files)
    self.image_shape = (sizes[0][1], sizes[0][0], 3)

  def read(self, start: int, stop: int) -> np.ndarray:
    images = list(_threads().map(read_image, self.files[start:stop]))
    for file, image in zip(self.files[start:stop], images):
      if image.shape != self.image_shape:  # a header that lied
        raise ValueError(f"{file} decodes to {image.shape}, the folder's images are {self.image_shape}.")
    return np.stack(images) if images else np.zeros((0, *self.image_shape), np.uint8)


# The formats PIL may decode: not PostScript/EPS, which it hands to Ghostscript (a program).
IMAGE_FORMATS = ('BMP', 'GIF', 'JPEG', 'PNG', 'PPM', 'TIFF', 'WEBP')


_WIDE_MODES = {'I;16': '16-bit', 'I;16B': '16-bit', 'I;16L': '16-bit', 'I;16N': '16-bit', 'I': '32-bit', 'F': 'float'}


_WARNED = set()  # the kinds of warning already given in this process


def _warn_once(kind: str, message: str) -> None:
  if kind not in _WARNED:  # a race of reader threads may say it twice, never not at all
    _WARNED.add(kind)
    logging.warning('%s', message)


def read_image(file, decode: bool = True):
  """The RGB pixels of a regular file (HWC uint8), or with decode=False only its (width, height);
  an image over MAX_IMAGE_PIXELS is refused before it is decoded. Whatever is wrong with the
  file is a one-line ValueError naming it."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  with npz.open_regular(file) as f:
    try:
      with Image.open(f, formats=IMAGE_FORMATS) as image:
        (width, height), pixels = image.size, None
        if decode and width * height <= MAX_IMAGE_PIXELS:
          if image.mode in _WIDE_MODES:
            _warn_once(
                'wide',
                f'{file} is a {_WIDE_MODES[image.mode]} image (mode {image.mode}): it is read as pytorch-fid reads '
                "it, whose convert('RGB') clips every value over 255 (most such images turn white); convert them "
                'to 8 bits first. Said once.',
            )
          pixels = np.asarray(image.convert('RGB'))
    except Exception as e:  # PIL raises several types for damaged files
      raise ValueError(f'cannot read image {file}: {type(e).__name__}: {e}') from None
  if not decode:
    return width, height
  if pixels is None:
    raise ValueError(f'{file}: {width}x{height} pixels are over the budget of {MAX_IMAGE_PIXELS:,}.')
  return pixels


class NpzImages:
  """`arr_0` of an .npz (NHWC uint8, as the ADM / guided-diffusion sample and reference batches),
  streamed from the archive a batch at a time: memory does not grow with the file. Read by
  `npz.Archive`: the header is checked against the archive before any image is decompressed.
  `statistics`: what an ADM reference batch holds beside its images (mu, sigma, mu_s, sigma_s)."""

  def __init__(self, path: str, statistics=None):
    self.name, self.statistics = path, statistics
    self._archive = npz.Archive(path)
    header = self._archive.header('arr_0')
    shape = header.shape
    if (
        header.dtype != np.uint8
        or len(shape) != 4
        or shape[-1] not in (1, 3)
        or 0 in shape[1:3]
        or header.fortran_order
    ):
      self._archive.close()
      raise ValueError(
          f'{path}: arr_0 is {npz.short(header.dtype)} of shape {npz.short(shape)}{" in Fortran order" * header.fortran_order}; '
          'expected NHWC uint8 images with 1 or 3 channels.'
      )
    self.num_images, self._shape = shape[0], shape[1:]
    self.image_shape = (*shape[1:3], 3)
    self._stream, self._next = None, 0

  def read(self, start: int, stop: int) -> np.ndarray:
    if stop > self.num_images:
      raise ValueError(f'{self.name}: arr_0 ends before image {stop} of {self.num_images}.')
    if self._stream is None or start < self._next:
      if self._stream is not None:
        self._stream.close()
      _, self._stream = self._archive.stream('arr_0')
      self._next = 0
    row = math.prod(self._shape)
    self._stream.skip((start - self._next) * row)  # other processes' rows
    data = self._stream.read((stop - start) * row)
    self._next = stop
    images = np.frombuffer(data, np.uint8).reshape(stop - start, *self._shape)
    return np.repeat(images, 3, axis=-1) if self._shape[-1] == 1 else images


class TfdsImages:
  """The 'image' feature of a TFDS split (`tfds:NAME[:SPLIT]`, default split 'train'), in the
  split's order; grey images become RGB as PIL's convert('RGB') makes them. Prepared as the
  training data are (inception_jax.data.prepare: offline from $TFDS_MANUAL_DIR)."""

  def __init__(self, spec: str):
    from inception_jax import data  # pylint: disable=g-import-not-at-top
    import ml_collections  # pylint: disable=g-import-not-at-top

    _, name, *split = spec.split(':', 2)
    self.name, self._split = spec, (split[0] if split else 'train')
    try:
      # The fields data.prepare reads; empty: TFDS's data dir, $TFDS_MANUAL_DIR.
      builder = data.prepare(ml_collections.ConfigDict({'dataset': name, 'data_dir': '', 'manual_dir': ''}))
    except ValueError as e:  # data.prepare's message names the dataset and near names
      raise ValueError(f'{str(e).splitlines()[0].rstrip(".")} (in {spec}; the form is tfds:NAME[:SPLIT]).') from None
    except data.DatasetUnavailableError as e:
      raise ValueError(str(e).splitlines()[0]) from None
    if 'image' not in builder.info.features:
      raise ValueError(f'{spec}: the dataset has no \'image\' feature (it has {", ".join(builder.info.features)}).')
    try:
      self.num_images = builder.info.splits[self._split].num_examples
    except Exception:  # pylint: disable=broad-except
      raise ValueError(f'{spec}: no split {self._split!r}; splits: {", ".join(builder.info.splits)}.') from None
    if not self.num_images:
      raise ValueError(f'{spec} holds no images.')
    dataset = builder.as_dataset(split=self._split, shuffle_files=False).map(lambda example: example['image'])
    self._images, self._position = dataset.as_numpy_iterator(), 0
    self._peeked = self._rgb(next(self._images))
    self.image_shape = self._peeked.shape

  def _rgb(self, image: np.ndarray) -> np.ndarray:
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image

  def _next_image(self) -> np.ndarray:
    image, self._peeked = (self._peeked, None) if self._peeked is not None else (self._rgb(next(self._images)), None)
    if image.shape != self.image_shape:
      raise ValueError(
          f'images of different sizes in {self.name}: image 0 is {self.image_shape}, '
          f'image {self._position} is {image.shape}.'
      )
    self._position += 1
    return image

  def read(self, start: int, stop: int) -> np.ndarray:
    if start < self._position:
      raise ValueError(f'{self.name} is read once, in order.')
    while self._position < start:  # other processes' rows
      self._next_image()
    images = [self._next_image() for _ in range(start, stop)]
    return np.stack(images) if images else np.zeros((0, *self.image_shape), np.uint8)


def check_pixels(source: ImageSource, batch_size: int = 1) -> None:
  """Refuses images over MAX_IMAGE_PIXELS, and batches of min(batch_size, images) over
  MAX_BATCH_PIXELS, from their shape: before any image is decoded."""
  height, width, _ = source.image_shape
  pixels, batch = height * width, min(batch_size, source.num_images)
  if pixels > MAX_IMAGE_PIXELS:
    raise ValueError(
        f'{source.name}: images of {width}x{height} pixels are over the budget of {MAX_IMAGE_PIXELS:,} pixels per '
        f'image ({3 * pixels / 2**20:,.0f} MiB each, decoded); pytorch-fid resizes them to 299x299: shrink them first.'
    )
  if batch * pixels > MAX_BATCH_PIXELS:
    raise ValueError(
        f'{source.name}: a batch of {batch} images of {width}x{height} pixels is {batch * pixels:,} pixels, over the '
        f'budget of {MAX_BATCH_PIXELS:,}; pass --batch_size={MAX_BATCH_PIXELS // pixels} or less (batch_size= in Python).'
    )


def save_npz_images(path: str, source: ImageSource, arrays: dict[str, np.ndarray], batch_size: int = 256) -> None:
  """An .npz as np.savez writes it (members stored, not compressed: ADM's reference batches) with
  `source`'s images as arr_0 (NHWC uint8), copied `batch_size` images at a time, and `arrays`:
  a new file, written whole or not at all (files.atomic)."""
  with files.atomic(path) as f:
    with zipfile.ZipFile(f, 'w', zipfile.ZIP_STORED, allowZip64=True) as archive:
      with archive.open('arr_0.npy', 'w', force_zip64=True) as member:
        header = {'descr': '|u1', 'fortran_order': False, 'shape': (source.num_images, *source.image_shape)}
        np.lib.format.write_array_header_1_0(member, header)
        for start in range(0, source.num_images, batch_size):
          member.write(np.ascontiguousarray(source.read(start, min(start + batch_size, source.num_images))).data)
      for key, value in arrays.items():
        with archive.open(f'{key}.npy', 'w', force_zip64=True) as member:
          np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
