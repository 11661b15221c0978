"""scripts.benchmark: the fields of its JSON lines, and the PyTorch networks it compares with
(scripts/torch_refs/benchmark_nets.py): our parameter counts, and our functions given our weights."""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest
import torch
import conftest
from model_utils import cheap_jit, variable_shapes
from scripts.torch_refs import benchmark_nets, nchw, numpy_state_dict, randomize

from inception_jax import models
from inception_jax.models import convert
from scripts import benchmark

# The script's flags belong to its command line; the functions tested here take arguments.
conftest.script_flags(benchmark)

TINY_MNIST = {'widths': (4, 8), 'hidden_units': 32}


@pytest.mark.parametrize('name', ['mnist_inception', 'googlenet', 'googlenet_torchvision'])
def test_torch_networks_have_our_parameter_counts(name):
  ours, theirs = benchmark.param_counts(name, image_size=None if name == 'mnist_inception' else 64)
  assert ours == theirs
  assert ours == {'mnist_inception': 140_573_758, 'googlenet': 13_381_592, 'googlenet_torchvision': 6_624_904}[name]


def test_train_run_reports_jax_and_torch_side_by_side():
  result = benchmark.run(
      'mnist_inception',
      'train',
      batch_size=2,
      steps=1,
      compare_torch=True,
      peak_flops=1e12,
      steps_per_loop=3,
      **TINY_MNIST,
  )
  json.dumps(result)  # one JSON line
  assert result['model'] == 'mnist_inception' and result['mode'] == 'train' and result['dtype'] == 'float32'
  assert (result['batch_size'], result['image_size'], result['aux_loss_weight']) == (2, 28, 0.3)
  assert result['steps_per_loop'] == 3  # times are per step: a call of 3 steps counts 3
  assert result['device_kind'] and result['device_count'] == jax.device_count()
  assert result['params'] == result['torch_params'] == 810_626
  assert result['macs_per_image'] > 0 and result['compile_seconds'] > 0 and result['peak_host_memory_gb'] > 0
  for prefix in ('', 'torch_'):
    seconds = result[f'{prefix}step_ms'] / 1e3
    assert result[f'{prefix}images_per_sec'] == pytest.approx(2 / seconds)
    assert result[f'{prefix}flops_per_sec'] == pytest.approx(3 * 2 * result['macs_per_image'] * 2 / seconds)
    assert result[f'{prefix}fraction_of_peak'] == pytest.approx(result[f'{prefix}flops_per_sec'] / 1e12)
  assert result['speedup'] == pytest.approx(result['images_per_sec'] / result['torch_images_per_sec'])
  assert result['speedup_of_fastest'] > 0 and result['speedup_in_cpu_time'] > 0
  assert len(result['step_ms_all']) == len(result['torch_step_ms_all']) == 1
  assert result['torch_threads'] >= 1 and result['peak_host_memory_gb_with_torch'] >= result['peak_host_memory_gb']


def test_a_torch_network_of_another_size_fails_before_compiling(monkeypatch):
  build = benchmark_nets.build
  monkeypatch.setattr(benchmark_nets, 'build', lambda name, model: build(name, model.clone(hidden_units=33)))
  with pytest.raises(AssertionError, match='not the same network'):
    benchmark.run('mnist_inception', 'eval', batch_size=2, steps=1, compare_torch=True, **TINY_MNIST)


def test_peak_and_input_pipeline_lines(make_config):
  result = benchmark.peak(n=128, steps=1, compare_torch=True)
  assert result['mode'] == 'peak' and result['flops_per_sec'] > 0 and result['torch_flops_per_sec'] > 0
  result = benchmark.input_pipeline(make_config(global_batch_size=8), steps=2)  # real MNIST
  json.dumps(result)
  assert (result['dataset'], result['batch_size'], result['image_shape'], result['batches']) == (
      'mnist',
      8,
      [28, 28, 1],
      2,
  )
  assert result['images_per_sec'] == pytest.approx(8e3 / result['batch_ms'])


def test_torch_mnist_network_computes_ours():
  torch.manual_seed(0)
  reference = benchmark_nets.MnistInception(widths=(4, 8), hidden_units=32).eval()
  state_dict = numpy_state_dict(reference)
  state_dict['fc1.weight'] = benchmark_nets.fc1_weight_to_hwc(state_dict['fc1.weight'], channels=32, size=28)
  model = models.create_model('mnist_inception', **TINY_MNIST)
  template = variable_shapes(model, (1, 28, 28, 1))
  variables, missing, unexpected = convert.torch_to_flax(state_dict, template)
  assert missing == [] and unexpected == []

  x = np.random.default_rng(0).random((3, 28, 28, 1), np.float32)
  logits, _ = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  with torch.no_grad():
    expected = reference(nchw(x)).numpy()
  assert np.abs(np.asarray(logits) - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())


def test_torch_googlenet_computes_our_paper_layout_with_aux_heads():
  torch.manual_seed(0)
  reference = randomize(benchmark_nets.PaperGoogLeNet(), torch.randn(4, 3, 64, 64))
  model = models.create_model('googlenet')
  variables, missing, unexpected = convert.torch_to_flax(
      numpy_state_dict(reference), variable_shapes(model), convert.GOOGLENET_TORCHVISION_RENAMES
  )
  assert missing == [] and unexpected == []

  # 160x224: a 10x14 map before the aux heads, so their 5x5/3 pool gives 2x4, which the
  # adaptive pool then spreads to 4x4.
  x = np.random.default_rng(1).normal(size=(2, 160, 224, 3)).astype(np.float32)
  logits, features = cheap_jit(functools.partial(model.apply, train=False))(variables, x)
  with torch.no_grad():
    expected = reference(nchw(x), with_aux=True)
  for ours, theirs in zip([logits, features['aux1'], features['aux2']], expected):
    assert np.abs(np.asarray(ours) - theirs.numpy()).max() < 1e-4
