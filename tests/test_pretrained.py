"""Published weights in one call: the registry, the download (checked, never kept half or wrong),
the caches of files and of converted variables, and each weights' preprocessing."""

import dataclasses
import hashlib
import io
import logging
import math
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import file_size_limit
from inception_jax import models, preprocess
from inception_jax.models import convert, hub, pretrained
from scripts.torch_refs import torchvision_googlenet as tv_googlenet


@pytest.fixture(scope='module')
def googlenet_file():
  """(bytes of a torch.save'd torchvision GoogLeNet state_dict with aux heads, the state_dict)."""
  torch.manual_seed(0)
  state = tv_googlenet.GoogLeNet(aux_logits=True).state_dict()
  buffer = io.BytesIO()
  torch.save(state, buffer)
  return buffer.getvalue(), state


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / 'cache'))
  monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
  return tmp_path / 'cache'


def publish(monkeypatch, http_server, body, name, sha256=None, headers=None, tag='torchvision', url=None):
  """Serves `body` as /models/`name` (from `url` instead: no server) and points googlenet's weights `tag` at it."""
  if http_server is not None:
    http_server.files[f'/models/{name}'] = (body, headers or {})
  published = hub.pretrained_weights('googlenet', 'torchvision')
  base = url or http_server.url
  entry = dataclasses.replace(published, tag=tag, url=f'{base}/models/{name}', sha256=sha256)
  monkeypatch.setitem(hub.WEIGHTS, 'googlenet', {**hub.WEIGHTS['googlenet'], tag: entry})
  return entry


def one_line(error: pytest.ExceptionInfo) -> str:
  message = str(error.value)
  assert '\n' not in message, message
  return message


def test_one_call_downloads_checks_converts_and_then_reads_the_cache_only(
    http_server, cache, googlenet_file, monkeypatch
):
  body, state = googlenet_file
  name = f'googlenet-{hashlib.sha256(body).hexdigest()[:8]}.pth'
  entry = publish(monkeypatch, http_server, body, name)

  model, variables = models.load_pretrained('googlenet', 'torchvision')
  # torchvision's builder: its layout, transform_input, dropout 0.2, and the untrained aux heads left out.
  assert (model.layout, model.transform_input, model.aux_logits, model.drop_rate) == ('torchvision', True, False, 0.2)
  np.testing.assert_array_equal(variables['params']['fc']['kernel'], state['fc.weight'].numpy().T)
  np.testing.assert_array_equal(
      variables['batch_stats']['inception4b']['branch5x5']['bn']['mean'],
      state['inception4b.branch3.1.bn.running_mean'].numpy(),
  )
  assert http_server.requests == [f'/models/{name}']
  assert sorted(os.listdir(cache)) == [hub.CONVERTED, name]
  # Named after the sha256 the file was checked against; no temporary left.
  assert os.listdir(cache / hub.CONVERTED) == [f'googlenet.torchvision-{name[10:18]}-v{hub.CONVERTED_VERSION}']
  umask = os.umask(0)
  os.umask(umask)
  assert (cache / name).stat().st_mode & 0o777 == 0o666 & ~umask  # readable as a shared cache, not mkstemp's 0600

  # The next call: no network (the server is gone) and no conversion.
  http_server.shutdown()
  monkeypatch.setattr(convert, 'convert_state_dict', lambda *a, **k: pytest.fail('converted again'))
  again_model, again = models.load_pretrained('googlenet', drop_rate=0.5)  # the default tag, and an override
  assert again_model.drop_rate == 0.5 and again_model.transform_input
  np.testing.assert_array_equal(
      again['params']['conv1']['conv']['kernel'], variables['params']['conv1']['conv']['kernel']
  )
  assert http_server.requests == [f'/models/{name}']


def test_a_file_whose_sha256_differs_is_refused_and_not_kept(http_server, cache, monkeypatch):
  body = b'not the published weights'
  publish(monkeypatch, http_server, body, 'googlenet-0123abcd.pth')  # the name's sha256 prefix is not the body's
  with pytest.raises(ValueError) as error:
    models.load_pretrained('googlenet', 'torchvision')
  assert 'not 0123abcd' in one_line(error) and 'not kept' in str(error.value)
  assert os.listdir(cache) == []


def test_a_name_without_hash_is_checked_against_the_sha256_the_server_declares(
    http_server, cache, googlenet_file, monkeypatch
):
  body, _ = googlenet_file
  digest = hashlib.sha256(body).hexdigest()
  # The Hugging Face hub names LFS files model.safetensors and declares their sha256 in X-Linked-Etag.
  publish(monkeypatch, http_server, body, 'model.pth', headers={'X-Linked-Etag': f'"{"0" * 64}"'}, tag='hub')
  with pytest.raises(ValueError, match='not 0000000000000000'):
    models.load_pretrained('googlenet', 'hub')
  assert os.listdir(cache) == []
  # The hub declares it on the redirect to its storage, whose response does not.
  http_server.files['/storage/blob'] = (body, {})
  publish(monkeypatch, http_server, '/storage/blob', 'model.pth', headers={'X-Linked-Etag': f'"{"0" * 64}"'}, tag='hub')
  with pytest.raises(ValueError, match='not 0000000000000000'):
    models.load_pretrained('googlenet', 'hub')
  entry = publish(
      monkeypatch, http_server, '/storage/blob', 'model.pth', headers={'X-Linked-Etag': f'"{digest}"'}, tag='hub'
  )
  models.load_pretrained('googlenet', 'hub')
  assert os.path.isdir(hub.converted_dir(entry, digest))
  # With no sha256 published or declared, nothing is kept unchecked.
  publish(monkeypatch, http_server, body, 'unchecked.pth', tag='unchecked')
  with pytest.raises(ValueError, match='no sha256 is published or declared for it to be checked against; not kept'):
    models.load_pretrained('googlenet', 'unchecked')
  assert 'unchecked.pth' not in os.listdir(cache)


def test_an_interrupted_download_leaves_nothing_and_says_how_to_pass_the_file(http_server, cache, monkeypatch):
  entry = publish(monkeypatch, http_server, None, 'googlenet-1378be20.pth')  # 10 of 1000 bytes
  with pytest.raises(ValueError) as error:
    models.load_pretrained('googlenet')
  message = one_line(error)
  assert 'interrupted after 10 bytes' in message and entry.url in message
  assert f'put it at {cache}/googlenet-1378be20.pth (then the tag finds it)' in message
  assert "load_pretrained('googlenet', 'PATH/googlenet-1378be20.pth')" in message
  assert os.listdir(cache) == []


def test_a_copy_put_in_the_cache_by_hand_serves_the_tag_once_checked(cache, googlenet_file, monkeypatch):
  body, state = googlenet_file
  name = f'googlenet-{hashlib.sha256(body).hexdigest()[:8]}.pth'
  publish(monkeypatch, None, body, name, url='http://127.0.0.1:9')  # offline
  cache.mkdir()
  (cache / name).write_bytes(body[:-1] + b'!')  # not the published file
  with pytest.raises(ValueError) as error:
    models.load_pretrained('googlenet')
  assert (
      one_line(error)
      == f'{cache}/{name} is not the published {name} (its sha256 does not start {name[10:18]}): delete it.'
  )
  (cache / name).write_bytes(body)
  model, variables = models.load_pretrained('googlenet')
  assert model.transform_input  # the tag's layout, which a bare path would not know
  np.testing.assert_array_equal(variables['params']['fc']['bias'], state['fc.bias'].numpy())


def other_googlenet_file() -> bytes:
  torch.manual_seed(1)
  buffer = io.BytesIO()
  torch.save(tv_googlenet.GoogLeNet(aux_logits=True).state_dict(), buffer)
  return buffer.getvalue()


def test_the_sha256_a_hub_declares_is_recorded_and_a_copy_replaced_later_is_refused(
    http_server, cache, googlenet_file, monkeypatch
):
  body, _ = googlenet_file
  digest = hashlib.sha256(body).hexdigest()
  entry = publish(monkeypatch, http_server, body, 'model.pth', headers={'X-Linked-Etag': f'"{digest}"'}, tag='hub')
  models.load_pretrained('googlenet', 'hub')
  assert (cache / 'model.pth.sha256').read_text() == f'{digest}  model.pth\n'  # sha256sum's format
  assert os.path.basename(hub.converted_dir(entry, digest)) == f'googlenet.hub-{digest[:16]}-v{hub.CONVERTED_VERSION}'
  # A different file put in its place is checked against the recorded hash, offline.
  http_server.shutdown()
  (cache / 'model.pth').write_bytes(other_googlenet_file())
  for folder in os.listdir(cache / hub.CONVERTED):
    shutil.rmtree(cache / hub.CONVERTED / folder)
  with pytest.raises(ValueError) as error:
    models.load_pretrained('googlenet', 'hub')
  assert one_line(error) == (
      f'{cache}/model.pth is not the published model.pth (its sha256 does not start {digest}): delete it.'
  )


def test_a_copy_of_a_file_with_no_published_sha256_is_said_unchecked_and_converted_as_it_is(
    cache, googlenet_file, monkeypatch, caplog
):
  body, state = googlenet_file
  publish(monkeypatch, None, body, 'model.pth', tag='hub', url='http://127.0.0.1:9')  # offline, no sha256
  cache.mkdir()
  (cache / 'model.pth').write_bytes(body)
  with caplog.at_level(logging.WARNING):
    _, variables = models.load_pretrained('googlenet', 'hub')
  np.testing.assert_array_equal(variables['params']['fc']['bias'], state['fc.bias'].numpy())
  assert f'{cache}/model.pth is not checked: no sha256 is published for it' in caplog.text
  # Replaced by another file: its own conversion, not the first file's converted folder.
  other = other_googlenet_file()
  (cache / 'model.pth').write_bytes(other)
  _, variables = models.load_pretrained('googlenet', 'hub')
  assert not np.array_equal(variables['params']['fc']['bias'], state['fc.bias'].numpy())
  assert len(os.listdir(cache / hub.CONVERTED)) == 2


def test_a_cache_that_cannot_take_the_conversion_costs_a_warning_not_the_result(
    cache, googlenet_file, monkeypatch, caplog
):
  body, state = googlenet_file
  name = f'googlenet-{hashlib.sha256(body).hexdigest()[:8]}.pth'
  publish(monkeypatch, None, body, name, url='http://127.0.0.1:9')
  cache.mkdir()
  (cache / name).write_bytes(body)
  with caplog.at_level(logging.WARNING), file_size_limit(1 << 20):  # the variables are 26 MB
    _, variables = models.load_pretrained('googlenet')
  np.testing.assert_array_equal(variables['params']['fc']['bias'], state['fc.bias'].numpy())
  assert [r.getMessage() for r in caplog.records] == [
      f'Converted {cache}/{name} but did not keep it in {cache}/converted: it needs about 28.9 MiB, '
      'and this process may write files of at most 1.0 MiB (ulimit -f); the next call converts again.'
  ]
  assert os.listdir(cache) == [name]  # nothing half-written


def test_offline_with_nothing_cached_is_one_line_naming_the_url(cache):
  published = hub.pretrained_weights('inception_v3', 'torchvision')  # port 9 stands in for no network
  entry = dataclasses.replace(
      published, url=published.url.replace('https://download.pytorch.org', 'http://127.0.0.1:9')
  )
  with pytest.raises(ValueError) as error:
    models.pretrained.load_published(entry)
  assert 'could not download inception_v3_google-0cc3c7bd.pth from http://127.0.0.1:9/models/' in one_line(error)
  assert "load_pretrained('inception_v3', 'PATH/inception_v3_google-0cc3c7bd.pth')" in str(error.value)


def test_local_files_and_folders_still_load(tmp_path, cache, googlenet_file):
  body, state = googlenet_file
  (tmp_path / 'weights.pth').write_bytes(body)
  model, variables = models.load_pretrained('googlenet', tmp_path / 'weights.pth', source='torchvision')
  np.testing.assert_array_equal(variables['params']['fc']['bias'], state['fc.bias'].numpy())
  models.save_pretrained(tmp_path / 'folder', 'googlenet', convert.model_config(model), variables)
  assert models.load_pretrained('googlenet', tmp_path / 'folder')[0] == model
  assert not cache.exists()  # nothing downloaded or cached


@pytest.mark.parametrize(
    'name, weights, message',
    [
        (
            'resnet50',
            None,
            "No published weights for model 'resnet50'; models with them: googlenet, inception_resnet_v2",
        ),
        (
            'inception_v3',
            'imagenet',
            "'inception_v3' has no weights 'imagenet': its published weights are torchvision, tv_in1k, tf_in1k",
        ),
        ('inception_v3', 'missing/weights.pth', 'missing/weights.pth: no such file or folder'),
    ],
)
def test_unknown_weights_are_named(name, weights, message):
  with pytest.raises(ValueError, match=message):
    models.load_pretrained(name, weights)


def test_the_registry_holds_each_files_published_preprocessing():
  def entry(name):
    w = hub.pretrained_weights(*name.split('.'))
    p = w.preprocessing
    return w.url, w.sha256, w.source, (p.input_size, p.resize_size, p.interpolation, p.normalization)

  # torchvision's Weights: ImageClassification(crop_size, resize_size), bilinear, ImageNet mean/std.
  assert entry('inception_v3.torchvision') == (
      'https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth',
      '0cc3c7bd',
      'torchvision',
      (299, 342, 'bilinear', 'imagenet'),
  )
  assert entry('googlenet.torchvision')[1:] == ('1378be20', 'torchvision', (224, 256, 'bilinear', 'imagenet'))
  # timm's pretrained_cfg: crop_pct 0.875 (0.8975 for Inception-ResNet-v2), bicubic, Inception mean/std;
  # its eval transform resizes to floor(input_size / crop_pct).
  for name, crop_pct in [
      ('inception_v3.tv_in1k', 0.875),
      ('inception_v3.tf_in1k', 0.875),
      ('inception_v4.tf_in1k', 0.875),
      ('inception_resnet_v2.tf_in1k', 0.8975),
  ]:
    url, sha256, source, fields = entry(name)
    assert url == f'https://huggingface.co/timm/{name}/resolve/main/model.safetensors' and source == 'timm'
    assert fields == (299, math.floor(299 / crop_pct), 'bicubic', 'inception') and sha256 is None
  assert entry('inception_v3_fid.pytorch_fid') == (
      hub.FID_WEIGHTS_URL,
      '6726825d',
      'pytorch_fid',
      (299, None, 'bilinear', 'inception'),
  )
  assert models.list_pretrained() == sorted(f'{m}.{t}' for m, tags in hub.WEIGHTS.items() for t in tags)


def test_preprocessing_crops_the_centre_as_torchvision_does():
  p = hub.pretrained_weights('inception_v3', 'torchvision').preprocessing
  rng = np.random.default_rng(0)
  # 342 wide, 400 high: Resize(342) keeps the size, so the crop's place is exact: torchvision's
  # CenterCrop takes top int(round((400 - 299) / 2)) = 50, left int(round((342 - 299) / 2)) = 22.
  image = rng.integers(0, 256, (400, 342, 3), np.uint8)
  expected = (image[50:349, 22:321] / np.float32(255) - np.float32(preprocess.IMAGENET_MEAN)) / np.float32(
      preprocess.IMAGENET_STD
  )
  np.testing.assert_allclose(p.transform(image), expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(p.transform(Image.fromarray(image)), expected, rtol=1e-6, atol=1e-6)
  # A wide grey image: the shorter side to 342, the longer int(342 * 700 / 500) = 478, three channels.
  grey = p.transform(rng.integers(0, 256, (500, 700), np.uint8))
  unnormalized = grey * np.float32(preprocess.IMAGENET_STD) + np.float32(preprocess.IMAGENET_MEAN)
  assert grey.shape == (299, 299, 3) and np.allclose(unnormalized[..., :1], unnormalized, atol=1e-6)
  # A resize: 517 wide, 333 high -> Resize(342) makes it 530 x 342 (int(342 * 517 / 333) = 530), then
  # CenterCrop(299) takes top int(round(21.5)) = 22, left int(round(115.5)) = 116 (rounding half to even).
  image = rng.integers(0, 256, (333, 517, 3), np.uint8)
  resized = np.asarray(Image.fromarray(image).resize((530, 342), Image.Resampling.BILINEAR))[22:321, 116:415]
  expected = (resized / np.float32(255) - np.float32(preprocess.IMAGENET_MEAN)) / np.float32(preprocess.IMAGENET_STD)
  np.testing.assert_allclose(p.transform(image), expected, rtol=1e-6, atol=1e-6)
  # pytorch-fid's: the whole image to 299 x 299 as F.interpolate does it (no antialiasing), then [-1, 1].
  fid = hub.pretrained_weights('inception_v3_fid').preprocessing
  small = rng.integers(0, 256, (20, 30, 1), np.uint8)
  np.testing.assert_allclose(
      fid.transform(small),
      np.asarray(preprocess.fid_inputs(np.repeat(small, 3, -1)[None] / np.float32(255)))[0],
      atol=1e-6,
  )
  with pytest.raises(ValueError, match=r'expected an HWC uint8 image with 1 or 3 channels .*float64 \(8, 8, 3\)'):
    p.transform(np.zeros((8, 8, 3)))


def test_a_cache_entry_another_process_wrote_first_is_kept_and_nothing_else_is_left(tmp_path):
  model = models.create_model('mnist_inception', widths=(4, 8), reduce_width=4, hidden_units=8)
  x = np.zeros((1, 28, 28, 1), np.float32)
  first = jax.jit(model.init, static_argnames='train')(jax.random.PRNGKey(0), x, train=False)
  second = jax.tree.map(lambda x: x + 1, first)
  folder = str(tmp_path / 'converted' / 'mnist_inception.tag')
  pretrained._save_atomically(folder, 'mnist_inception', model, first)
  pretrained._save_atomically(folder, 'mnist_inception', model, second)  # lost the race: no error
  _, loaded = models.load_pretrained('mnist_inception', folder)
  jax.tree.map(np.testing.assert_array_equal, loaded, first)
  assert os.listdir(tmp_path / 'converted') == ['mnist_inception.tag']


def test_a_tag_is_a_tag_whatever_folder_has_its_name(tmp_path, cache, googlenet_file, monkeypatch, http_server):
  body, _ = googlenet_file
  publish(monkeypatch, http_server, body, f'googlenet-{hashlib.sha256(body).hexdigest()[:8]}.pth')
  (tmp_path / 'torchvision').mkdir()
  monkeypatch.chdir(tmp_path)
  assert models.load_pretrained('googlenet', 'torchvision')[0].layout == 'torchvision'


def test_a_damaged_cache_entry_is_one_line_saying_to_delete_it(cache, googlenet_file, monkeypatch, http_server):
  body, _ = googlenet_file
  entry = publish(monkeypatch, http_server, body, f'googlenet-{hashlib.sha256(body).hexdigest()[:8]}.pth')
  models.load_pretrained('googlenet')
  for root, _, files in os.walk(hub.converted_dir(entry, hub.known_sha256(entry))):
    for file in files:
      if 'manifest' in file or file.endswith('.ocdbt') or 'd/' in root + '/':
        pathlib.Path(root, file).write_bytes(b'damaged')
  with pytest.raises(ValueError) as error:
    models.load_pretrained('googlenet')
  assert one_line(error).startswith(
      f'cannot read converted weights {hub.converted_dir(entry, hub.known_sha256(entry))} ('
  )
  assert one_line(error).endswith('delete the folder to download and convert again.')


def test_the_offline_hint_of_a_timm_file_names_its_layout(cache):
  published = hub.pretrained_weights('inception_v3', 'tf_in1k')
  entry = dataclasses.replace(
      published, url='http://127.0.0.1:9/timm/inception_v3.tf_in1k/resolve/main/model.safetensors'
  )
  with pytest.raises(ValueError) as error:
    models.pretrained.load_published(entry)
  assert one_line(error).endswith("load_pretrained('inception_v3', 'PATH/model.safetensors', source='timm').")
