"""pytorch-fid's FID Inception: its published weight file, downloaded once (sha256-checked), and
the converted network."""

from __future__ import annotations

import dataclasses
import os

from inception_jax import models
from inception_jax.models import hub, pretrained

FID_WEIGHTS_URL = hub.FID_WEIGHTS_URL
CACHE_ENV = hub.CACHE_ENV  # where downloaded weights go; default ~/.cache/inception_jax


def fid_weights_file(cache_dir: str | None = None, url: str | None = None) -> str:
  """pytorch-fid's weight file, downloaded once and checked against the sha256 prefix in its name.

  Looks first where pytorch-fid's own download goes (torch.hub's checkpoints folder), then
  in `cache_dir` (default $INCEPTION_JAX_CACHE or ~/.cache/inception_jax).
  """
  url = url or FID_WEIGHTS_URL
  hint = f'pass --weights=PATH/{os.path.basename(url)} (or weights= in Python)'
  return hub.download(url, cache=cache_dir, hint=hint)


def load_fid_inception(weights: str | None = None):
  """(model, variables) of pytorch-fid's FID Inception.

  `weights`: pytorch-fid's .pth file (read without pickle's code execution and converted),
  a folder written by `scripts.convert_weights --model=inception_v3_fid`, or None to use
  pytorch-fid's published file (downloaded and converted once, then read from the cache).
  """
  if weights is None:
    published = dataclasses.replace(hub.pretrained_weights('inception_v3_fid', 'pytorch_fid'), url=FID_WEIGHTS_URL)
    hint = f'pass --weights=PATH/{os.path.basename(FID_WEIGHTS_URL)} (or weights= in Python)'
    model, variables = pretrained.load_published(published, hint=hint)
  elif not os.path.exists(weights):
    raise ValueError(f'--weights={weights}: no such file or folder.')
  else:
    model, variables = models.load_pretrained('inception_v3_fid', weights)
  if model.num_classes != 1008:
    raise ValueError(f"{weights} is not pytorch-fid's FID Inception ({model.num_classes} classes, not 1008).")
  return model, variables
