"""pytorch-fid's FID Inception: its published weight file, downloaded once (sha256-checked), and
the converted network."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import tempfile
import urllib.request

import jax
import jax.numpy as jnp

from inception_jax import convert, models, torch_files

FID_WEIGHTS_URL = (
    'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth'
)
CACHE_ENV = 'INCEPTION_JAX_CACHE'  # where downloaded weights go; default ~/.cache/inception_jax


def fid_weights_file(cache_dir: str | None = None, url: str | None = None) -> str:
  """pytorch-fid's weight file, downloaded once and checked against the sha256 prefix in its name.

  Looks first where pytorch-fid's own download goes (torch.hub's checkpoints folder), then
  in `cache_dir` (default $INCEPTION_JAX_CACHE or ~/.cache/inception_jax).
  """
  url = url or FID_WEIGHTS_URL
  name = os.path.basename(url)
  cache_home = os.environ.get('XDG_CACHE_HOME', os.path.join(os.path.expanduser('~'), '.cache'))
  torch_home = os.environ.get('TORCH_HOME', os.path.join(cache_home, 'torch'))  # as torch.hub finds it
  cache_dir = cache_dir or os.environ.get(CACHE_ENV) or os.path.join(cache_home, 'inception_jax')
  for folder in (os.path.join(torch_home, 'hub', 'checkpoints'), cache_dir):
    if os.path.isfile(os.path.join(folder, name)):
      return os.path.join(folder, name)
  try:
    os.makedirs(cache_dir, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=cache_dir, prefix=name + '.', suffix='.partial')
  except OSError as e:
    raise ValueError(
        f'cannot make the cache folder {cache_dir} for {name} ({e.strerror}): set ${CACHE_ENV} to a folder '
        f'you can write, or pass --weights=PATH/{name} (weights= in Python).'
    ) from None
  target, received = os.path.join(cache_dir, name), 0
  try:
    digest = hashlib.sha256()
    with os.fdopen(fd, 'wb') as f, urllib.request.urlopen(url, timeout=60) as response:
      while chunk := response.read(1 << 20):
        digest.update(chunk)
        f.write(chunk)
        received += len(chunk)
      size = response.headers.get('Content-Length', '')
      if size.isdigit() and received < int(size):  # http.client can end a short body silently
        raise http.client.IncompleteRead(b'', int(size) - received)
    # torch.hub's check: the hex digits after the last '-' of the name start the sha256.
    prefix = re.search(r'-([a-f0-9]+)\.', name)
    if prefix and not digest.hexdigest().startswith(prefix.group(1)):
      raise ValueError(
          f'{url} downloaded with sha256 {digest.hexdigest()[:16]}..., not {prefix.group(1)}...: '
          'a damaged or different file; not kept.'
      )
    os.replace(partial, target)
  except (OSError, http.client.HTTPException) as e:
    if isinstance(e, http.client.IncompleteRead):
      e = f'interrupted after {received + len(e.partial):,} bytes'
    raise ValueError(
        f'could not download {name} from {url} ({e}); fetch it elsewhere and pass '
        f'--weights=PATH/{name} (or weights= in Python).'
    ) from None
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return target


def load_fid_inception(weights: str | None = None):
  """(model, variables) of pytorch-fid's FID Inception.

  `weights`: pytorch-fid's .pth file (read without pickle's code execution and converted),
  a folder written by `scripts.convert_weights --model=inception_v3_fid`, or None to use
  (and download once) pytorch-fid's published file.
  """
  weights = weights or fid_weights_file()
  if os.path.isdir(weights):
    return models.load_pretrained('inception_v3_fid', weights)
  if not os.path.isfile(weights):
    raise ValueError(f'--weights={weights}: no such file or folder.')
  model, variables, missing, _ = convert.convert_state_dict(
      'inception_v3_fid', torch_files.load_state_dict(weights), source='pytorch_fid'
  )
  if missing or model.num_classes != 1008:
    raise ValueError(
        f"{weights} is not pytorch-fid's FID Inception ({model.num_classes} classes, not 1008; "
        f'{len(missing)} variable(s) missing).'
    )
  return model, jax.tree.map(jnp.asarray, variables)
