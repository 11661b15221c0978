"""scripts.predict: top-5 ImageNet classes with torchvision's names, and embeddings, from image files."""

import jax
import numpy as np
import pytest
import torch
from PIL import Image

import conftest
from inception_jax import classify, metrics, models
from scripts import predict
from scripts.torch_refs import randomize
from scripts.torch_refs import torchvision_googlenet as tv_googlenet

run = conftest.script_runner(predict)


@pytest.fixture(scope='module')
def googlenet_file(tmp_path_factory):
  """A torchvision GoogLeNet file with random weights whose BatchNorm statistics keep activations
  alive, so that different images get different classes."""
  torch.manual_seed(0)
  network = randomize(tv_googlenet.GoogLeNet(aux_logits=False), torch.rand(4, 3, 224, 224) * 2 - 1)
  path = tmp_path_factory.mktemp('weights') / 'googlenet.pth'
  torch.save(network.state_dict(), path)
  return path


def test_prints_top5_with_names_and_writes_the_embeddings(tmp_path, googlenet_file, capsys):
  rng = np.random.default_rng(0)
  files = []
  for i, (h, w) in enumerate([(300, 400), (256, 256), (500, 260)]):
    files.append(tmp_path / f'image{i}.png')
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(files[-1])
  out = tmp_path / 'embeddings.npy'
  assert run('--model=googlenet', f'--pretrained={googlenet_file}', f'--embed={out}', '--batch_size=2', *files) == 0
  printed = capsys.readouterr().out.splitlines()

  # The same, by hand: torchvision's evaluation transform, then the network.
  model, variables = models.load_pretrained('googlenet', googlenet_file)
  preprocessing = models.pretrained_weights('googlenet', 'torchvision').preprocessing
  images = np.stack([preprocessing.transform(Image.open(f)) for f in files])
  logits, features = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  probabilities = np.asarray(jax.nn.softmax(logits))
  names = classify.imagenet_classes()
  for i, file in enumerate(files):
    block = printed[i * 6 : i * 6 + 6]
    assert block[0] == str(file)
    top = np.argsort(-probabilities[i])[:5]
    for line, index in zip(block[1:], top):
      probability, printed_index, name = line.split(maxsplit=2)
      assert (int(printed_index), name) == (index, names[index])
      assert float(probability) == pytest.approx(probabilities[i, index], abs=1e-4)
  embeddings = np.load(out)
  assert embeddings.shape == (3, 1024) and embeddings.dtype == np.float32
  np.testing.assert_allclose(embeddings, features['pre_logits'], rtol=1e-4, atol=1e-5)
  assert printed[-1] == f'wrote {out}: 3 x 1024 float32'


def test_class_names_are_torchvisions():
  names = classify.imagenet_classes()
  assert len(names) == len(set(names)) == 1000
  assert (names[0], names[281], names[134], names[517], names[639], names[999]) == (
      'tench',
      'tabby',
      'crane bird',
      'crane',
      'maillot tank suit',
      'toilet tissue',
  )


def test_bad_images_and_weights_are_one_line(tmp_path, googlenet_file, capsys):
  (tmp_path / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not an image')
  assert run('--model=googlenet', f'--pretrained={googlenet_file}', tmp_path / 'broken.png') == 1
  assert capsys.readouterr().err.startswith(f'error: cannot read image {tmp_path}/broken.png: ')
  with pytest.raises(ValueError, match='missing.png'):
    classify.load_image(tmp_path / 'missing.png')
  assert run('--model=googlenet', '--pretrained=imagenet', tmp_path / 'broken.png') == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and "'googlenet' has no weights 'imagenet'" in err


def test_an_image_in_a_format_that_runs_a_program_is_refused_unopened(tmp_path):
  """PIL hands PostScript (EPS) to Ghostscript, a program: named .png, it must not even be identified."""
  eps = b'%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n'
  (tmp_path / 'image.png').write_bytes(eps)
  with pytest.raises(ValueError, match=r'cannot read image .*image\.png: UnidentifiedImageError'):
    classify.load_image(tmp_path / 'image.png')
  with pytest.raises(ValueError, match=r'cannot read image .*image\.png: UnidentifiedImageError'):
    metrics.open_path(str(tmp_path))


def test_embed_never_replaces_a_file_or_an_input_unless_asked(tmp_path, googlenet_file, capsys):
  # Issue 30, finding 2: `--embed img0.png img1.png` (absl takes img0.png as --embed's value) replaced that image.
  images = []
  for i in range(2):
    images.append(tmp_path / f'img{i}.png')
    Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(images[-1])
  before = {p: p.read_bytes() for p in images}
  for args in (['--embed', images[0], images[1]], [f'--embed={images[1]}', *images]):
    assert run('--model=googlenet', f'--pretrained={googlenet_file}', *args) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: --embed=') and ('exists' in err or 'input' in err), err
  assert {p: p.read_bytes() for p in images} == before
  (tmp_path / 'folder.npy').mkdir()
  assert (
      run(
          '--model=googlenet',
          f'--pretrained={googlenet_file}',
          f'--embed={tmp_path / "folder.npy"}',
          '--overwrite',
          *images,
      )
      == 1
  )
  assert 'is a folder' in capsys.readouterr().err
  out = tmp_path / 'old.npy'
  out.write_bytes(b'keep')
  assert run('--model=googlenet', f'--pretrained={googlenet_file}', f'--embed={out}', *images) == 1
  assert 'exists' in capsys.readouterr().err and out.read_bytes() == b'keep'
  assert run('--model=googlenet', f'--pretrained={googlenet_file}', f'--embed={out}', '--overwrite', *images) == 0
  assert np.load(out).shape == (2, 1024)
