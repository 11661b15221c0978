"""Published weights by name: where each file is, how it is checked, and the images it expects.

    model, variables = models.load_pretrained('inception_v3', 'torchvision')   # the one call
    models.list_pretrained()                    # ['googlenet.torchvision', 'inception_v3.tf_in1k', ...]
    weights = models.pretrained_weights('inception_v3', 'torchvision')
    x = weights.preprocessing.transform(pil_image)   # resize, centre crop, normalize, as torchvision does

A file is downloaded once into the cache ($INCEPTION_JAX_CACHE, default
~/.cache/inception_jax; a copy in torch.hub's folder is used if it passes the check), checked
against its sha256 before it is kept, and converted once: the Flax variables go to
`converted/<model>.<tag>-<the file's sha256>-v<conversion version>/` in the cache, so the next
call reads them with no network and no conversion, and a different file gets its own folder.
Entries and their preprocessing follow torchvision's `Weights` and timm's `pretrained_cfg` for
the same files.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import http.client
import logging
import os
import re
import urllib.request

from inception_jax import files
from inception_jax.preprocess import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, Preprocessing

CACHE_ENV = 'INCEPTION_JAX_CACHE'  # where downloaded and converted weights go; default ~/.cache/inception_jax
CONVERTED = 'converted'  # the cache's folder of converted weights
CONVERTED_VERSION = 2  # part of a converted folder's name: raise it when the conversion changes


@dataclasses.dataclass(frozen=True)
class Weights:
  """One published weight file for a registered model."""

  model: str  # models.list_models() name
  tag: str
  source: str  # the layout its keys follow: a models.convert.WEIGHT_SOURCES source
  url: str
  # The file's sha256, or the start of it that its name carries (torch.hub's convention). None:
  # the hash the server declares for the file (the Hugging Face hub's X-Linked-Etag) is checked
  # and recorded beside it in the cache (`<file>.sha256`); later reads are checked against that.
  sha256: str | None
  preprocessing: Preprocessing
  filename: str = ''  # in the cache; default: the URL's last part

  @property
  def name(self) -> str:
    return f'{self.model}.{self.tag}'

  @property
  def file(self) -> str:
    return self.filename or os.path.basename(self.url)


def _torchvision(input_size: int, resize_size: int) -> Preprocessing:
  """torchvision's `ImageClassification` transform: bilinear, ImageNet mean/std (its GoogLeNet and
  Inception v3 turn those into [-1, 1] inside, with transform_input=True)."""
  return Preprocessing(input_size, resize_size, 'bilinear', IMAGENET_MEAN, IMAGENET_STD)


def _timm(crop_pct: float) -> Preprocessing:
  """timm's evaluation transform for these cfgs: Resize(floor(299 / crop_pct)), bicubic, Inception mean/std."""
  return Preprocessing(299, int(299 // crop_pct), 'bicubic', INCEPTION_MEAN, INCEPTION_STD)


def _timm_hub(model: str, tag: str, crop_pct: float = 0.875) -> Weights:
  url = f'https://huggingface.co/timm/{model}.{tag}/resolve/main/model.safetensors'
  return Weights(model, tag, 'timm', url, None, _timm(crop_pct), filename=f'{model}.{tag}.safetensors')


FID_WEIGHTS_URL = (
    'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth'
)

# Model -> tag -> weights; a model's first tag is its default.
WEIGHTS: dict[str, dict[str, Weights]] = {}
for _weights in (
    # torchvision: GoogLeNet_Weights.IMAGENET1K_V1 (69.78% top-1), Inception_V3_Weights.IMAGENET1K_V1 (77.29%).
    Weights(
        'googlenet',
        'torchvision',
        'torchvision',
        'https://download.pytorch.org/models/googlenet-1378be20.pth',
        '1378be20',
        _torchvision(224, 256),
    ),
    Weights(
        'inception_v3',
        'torchvision',
        'torchvision',
        'https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth',
        '0cc3c7bd',
        _torchvision(299, 342),
    ),
    # timm's hub files (its pretrained_cfg: crop_pct, bicubic, Inception mean/std).
    _timm_hub('inception_v3', 'tv_in1k'),  # torchvision's weights, with their aux head, fed [-1, 1]
    _timm_hub('inception_v3', 'tf_in1k'),  # TF-slim's inception_v3_2016_08_28
    _timm_hub('inception_v4', 'tf_in1k'),
    _timm_hub('inception_resnet_v2', 'tf_in1k', crop_pct=0.8975),
    # pytorch-fid's FID Inception: its wrapper resizes the whole image to 299x299 (bilinear), then [-1, 1].
    Weights(
        'inception_v3_fid',
        'pytorch_fid',
        'pytorch_fid',
        FID_WEIGHTS_URL,
        '6726825d',
        Preprocessing(299, None, 'bilinear', INCEPTION_MEAN, INCEPTION_STD),
    ),
):
  WEIGHTS.setdefault(_weights.model, {})[_weights.tag] = _weights


def list_pretrained() -> list[str]:
  """'model.tag' of every published weight file, for `load_pretrained(model, tag)`."""
  return sorted(w.name for tags in WEIGHTS.values() for w in tags.values())


def pretrained_weights(model: str, tag: str | None = None) -> Weights:
  """The registry's entry for `model`'s weights `tag` (default: the model's first)."""
  tags = WEIGHTS.get(model)
  if not tags:
    raise ValueError(
        f'No published weights for model {model!r}; models with them: {", ".join(sorted(WEIGHTS))}. '
        'A converted folder or a PyTorch file of your own loads by its path.'
    )
  if tag is None:
    return next(iter(tags.values()))
  if tag not in tags:
    raise ValueError(
        f'{model!r} has no weights {tag!r}: its published weights are {", ".join(tags)}; '
        'or give the path of a .pth/.safetensors file or a converted folder.'
    )
  return tags[tag]


def cache_dir() -> str:
  """$INCEPTION_JAX_CACHE, else ~/.cache/inception_jax ($XDG_CACHE_HOME honoured)."""
  return os.environ.get(CACHE_ENV) or os.path.join(_cache_home(), 'inception_jax')


def converted_dir(weights: Weights, sha256: str) -> str:
  """The cache's folder of `weights` converted from the file with `sha256` (or its start): a
  different file, or a changed conversion (CONVERTED_VERSION), never reads an old folder."""
  return os.path.join(cache_dir(), CONVERTED, f'{weights.name}-{sha256[:16]}-v{CONVERTED_VERSION}')


def known_sha256(weights: Weights) -> str | None:
  """What `weights`' file is checked against: the registry's sha256, the start its name
  carries, or the hash the hub declared when it was downloaded (recorded in the cache)."""
  return _published_sha256(weights.url, weights.sha256) or _recorded_sha256(os.path.join(cache_dir(), weights.file))


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def _published_sha256(url: str, sha256: str | None) -> str | None:
  if sha256 is None and (match := re.search(r'-([a-f0-9]{8,64})\.', os.path.basename(url))):
    return match.group(1)
  return sha256


def _recorded_sha256(path: str) -> str | None:
  """The sha256 recorded for the downloaded file `path` (sha256sum's `<hex>  <name>` line), if any."""
  try:
    with open(path + '.sha256', encoding='utf-8') as f:
      line = f.read(200)
  except FileNotFoundError:
    return None
  if not (match := re.fullmatch(r'([a-f0-9]{64})  (\S+)\n?', line)) or match.group(2) != os.path.basename(path):
    raise ValueError(f'{path}.sha256 is not the sha256 record of {os.path.basename(path)}: delete it and {path}.')
  return match.group(1)


def _cache_home() -> str:
  return os.environ.get('XDG_CACHE_HOME', os.path.join(os.path.expanduser('~'), '.cache'))


def torch_hub_dir() -> str:
  """Where torch.hub (torchvision, pytorch-fid) keeps the files it downloads."""
  return os.path.join(os.environ.get('TORCH_HOME', os.path.join(_cache_home(), 'torch')), 'hub', 'checkpoints')


def download(url: str, filename: str = '', sha256: str | None = None, *, cache: str | None = None, hint: str) -> str:
  """The path of `url`'s file, downloaded once into `cache` (default: cache_dir()) and checked.

  Looks first in the cache (where a copy fetched elsewhere may be put), then in torch.hub's
  folder; a file found is checked too. The check: `sha256` (the digest or its start), else the
  hex digits after the last '-' of the file's name (torch.hub's convention), else the sha256
  the server declared when it was downloaded: X-Linked-Etag, recorded beside the file as
  `<file>.sha256`. A copy put in the cache by hand with none of these is used with a warning
  that it is not checked. A download goes to a temporary file, renamed when complete and
  checked: an interrupted or wrong download leaves nothing. `hint` says how to pass a local
  copy instead.
  """
  filename = filename or os.path.basename(url)
  sha256 = _published_sha256(url, sha256)
  cache = cache or cache_dir()
  cached = os.path.join(cache, filename)
  if os.path.isfile(cached):  # downloaded (and checked) before, or put there by hand
    expected = sha256 or _recorded_sha256(cached)
    if expected is None:
      logging.warning(
          '%s is not checked: no sha256 is published for it, and none was recorded (it was not downloaded here); '
          'it is used as it is.',
          cached,
      )
    elif not file_sha256(cached).startswith(expected):
      raise ValueError(f'{cached} is not the published {filename} (its sha256 does not start {expected}): delete it.')
    return cached
  found = os.path.join(torch_hub_dir(), os.path.basename(url))
  if sha256 and os.path.isfile(found) and file_sha256(found).startswith(sha256):
    return found
  try:
    os.makedirs(cache, exist_ok=True)
    if not os.access(cache, os.W_OK):
      raise PermissionError(errno.EACCES, 'not writable', cache)
  except OSError as e:
    raise ValueError(
        f'cannot make the cache folder {cache} for {filename} ({e.strerror}): set ${CACHE_ENV} to a folder '
        f'you can write, or {hint}.'
    ) from None
  received = 0
  try:
    digest = hashlib.sha256()
    declared = _DeclaredSha256()
    # Another process may have put the same checked file there meanwhile: replacing it changes nothing.
    with (
        files.atomic(cached, overwrite=True) as f,
        urllib.request.build_opener(declared).open(url, timeout=60) as response,
    ):
      declared.read(response.headers)
      while chunk := response.read(1 << 20):
        digest.update(chunk)
        f.write(chunk)
        received += len(chunk)
      size = response.headers.get('Content-Length', '')
      if size.isdigit() and received < int(size):  # http.client can end a short body silently
        raise http.client.IncompleteRead(b'', int(size) - received)
      expected = sha256 or declared.sha256
      if expected is None:
        raise ValueError(f'{url}: no sha256 is published or declared for it to be checked against; not kept.')
      if not digest.hexdigest().startswith(expected):
        raise ValueError(
            f'{url} downloaded with sha256 {digest.hexdigest()[:16]}..., not {expected[:16]}...: '
            'a damaged or different file; not kept.'
        )
      if sha256 is None:  # recorded before the file appears: a file in the cache never lacks its record
        with files.atomic(cached + '.sha256', overwrite=True, text=True) as record:
          record.write(f'{expected}  {filename}\n')
  except (OSError, http.client.HTTPException) as e:
    if isinstance(e, http.client.IncompleteRead):
      e = f'interrupted after {received + len(e.partial):,} bytes'
    raise ValueError(f'could not download {filename} from {url} ({e}); fetch it elsewhere and {hint}.') from None
  return cached


class _DeclaredSha256(urllib.request.HTTPRedirectHandler):
  """Follows redirects and keeps the sha256 a response on the way declares for the file: the
  Hugging Face hub sends it as X-Linked-Etag on the redirect to its storage, not on the file."""

  sha256: str | None = None

  def read(self, headers) -> None:
    etag = (headers.get('X-Linked-Etag') or '').strip('"')
    if re.fullmatch(r'[a-f0-9]{64}', etag):
      self.sha256 = etag

  def redirect_request(self, req, fp, code, msg, headers, newurl):  # pylint: disable=too-many-arguments
    self.read(headers)
    return super().redirect_request(req, fp, code, msg, headers, newurl)
