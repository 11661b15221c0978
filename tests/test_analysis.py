import json
import subprocess
import sys

from inception_jax import analysis, models

GOOGLENET_3A = (64, 96, 128, 16, 32, 32)  # widths of inception (3a) in the GoogLeNet table


def by_name(layers):
  return {l.name: l for l in layers}


def test_seed_arithmetic_naive_5x5_tower():
  layers = by_name(analysis.count(models.InceptionBlock(*GOOGLENET_3A, reduce=False), (28, 28, 192)))
  assert layers['branch5x5/conv'].macs == 5**2 * 28**2 * 192 * 32 == 120_422_400
  assert layers['branch5x5/conv'].output_shape == (28, 28, 32)
  assert 'branch5x5_reduce/conv' not in layers


def test_seed_arithmetic_reduced_5x5_tower():
  layers = by_name(analysis.count(models.InceptionBlock(*GOOGLENET_3A), (28, 28, 192)))
  reduce, conv = layers['branch5x5_reduce/conv'].macs, layers['branch5x5/conv'].macs
  assert (reduce, conv) == (2_408_448, 10_035_200)
  assert reduce + conv == 12_443_648


def test_seed_network_totals_follow_from_the_layers():
  layers = analysis.count(models.create_model('mnist_inception'), (28, 28, 1), train=False)
  assert sum(l.params for l in layers) == 140_573_758
  named = by_name(layers)
  assert named['fc1'].macs == 28 * 28 * 256 * 700
  assert named['inception2/branch5x5/conv'].macs == 5**2 * 28**2 * 16 * 64
  assert sum(l.macs for l in layers) == 197_575_000


def test_flops_script_prints_the_seed_numbers():
  run = lambda *args: subprocess.run(
      [sys.executable, '-m', 'scripts.flops', *args], check=True, capture_output=True, text=True
  ).stdout
  block = ['--block=' + ','.join(map(str, GOOGLENET_3A)), '--in_channels=192', '--image_size=28', '--json']
  naive = {l['name']: l for l in json.loads(run(*block, '--naive'))['layers']}
  reduced = {l['name']: l for l in json.loads(run(*block))['layers']}
  assert naive['branch5x5/conv']['macs'] == 120_422_400
  assert reduced['branch5x5_reduce/conv']['macs'] + reduced['branch5x5/conv']['macs'] == 12_443_648
  table = run('--model=mnist_inception')
  assert '140,573,758' in table and '20,070,400' in table  # total params; inception2's 5x5 tower
