"""JAX's persistent compilation cache as runs use it (config.compilation_cache_dir, the commands'
--compilation_cache_dir): a second process running the same training step reads it from the
cache and compiles nothing; '' turns the cache off; a folder that cannot hold it, or damaged
entries, cost a warning and a compile, never the run.

These tests exercise compilation itself, so each uses an empty cache of its own, not the suite's.
"""

import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging
from jax.experimental.compilation_cache import compilation_cache as jax_cache

import conftest
from conftest import TINY
from inception_jax import compilation_cache
from scripts import benchmark

conftest.script_flags(benchmark)  # the script's flags belong to its command line


def test_a_resumed_process_reads_the_training_step_from_the_cache():
  # scripts.benchmark --mode=resume on the tiny MNIST run: cold with an empty cache of its own, stopped
  # by SIGTERM after its first step, then resumed with that cache.
  overrides = [f'{field}={value}' for field, value in TINY.items() if 'every' not in field and 'steps' not in field]
  overrides.append('train_split=train[:512]')
  result = benchmark.resume('experiments/configs/mnist_inception.py', overrides, uncached=False)
  assert 'jit_train_steps' in result['cold_written_to_cache'], result['_logs']['cold'][-3000:]
  assert 'jit_train_steps' not in result['cold_read_from_cache']
  # The resumed process compiles nothing it compiled before: the step and the checkpoint's checksums are read.
  assert 'jit_train_steps' in result['resumed_warm_cache_read_from_cache'], result['_logs']['resumed_warm_cache']
  assert result['resumed_warm_cache_written_to_cache'] == []
  assert 1 <= result['cold_first_step'] < result['resumed_warm_cache_first_step']
  assert result['cache_entries'] == len(result['cold_written_to_cache']) > 0
  json.dumps({k: v for k, v in result.items() if not k.startswith('_')})


@pytest.fixture
def restores_the_suites_cache():
  """Tests that switch this process's cache: the suite's is switched back afterwards."""
  folder, enabled = jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache
  yield
  jax.config.update('jax_enable_compilation_cache', enabled)
  jax_cache.reset_cache()
  jax_cache.set_cache_dir(folder)


def compile_and_run(scale: float):
  """`scale`'s program, compiled (a new function: JAX's in-memory caches miss) through the cache."""
  return np.asarray(jax.jit(lambda x: jnp.tanh(x * scale) @ x.T)(jnp.ones((64, 64))))


def test_off_means_off(tmp_path, restores_the_suites_cache):
  jax.config.update('jax_compilation_cache_dir', str(tmp_path / 'from_jax'))  # even where JAX's own names one
  assert compilation_cache.enable('') is None
  compile_and_run(0.5)
  assert not (tmp_path / 'from_jax').exists()


def test_auto_is_jaxs_own_setting_else_the_projects_folder(tmp_path, monkeypatch, restores_the_suites_cache):
  jax.config.update('jax_compilation_cache_dir', str(tmp_path / 'from_jax'))
  assert compilation_cache.enable('auto') == str(tmp_path / 'from_jax')
  jax.config.update('jax_compilation_cache_dir', None)
  monkeypatch.setenv('INCEPTION_JAX_CACHE', str(tmp_path / 'project'))
  assert compilation_cache.enable('auto') == str(tmp_path / 'project' / 'jax')
  assert compilation_cache.enable(str(tmp_path / 'mine')) == str(tmp_path / 'mine')
  compile_and_run(1.5)
  assert os.listdir(tmp_path / 'mine')  # the folder given last is the one written


@pytest.mark.parametrize('how', ['a_file', 'shared_folder'])
def test_a_folder_that_cannot_hold_the_cache_is_one_warning_and_no_cache(tmp_path, restores_the_suites_cache, how):
  path = tmp_path / 'cache'
  if how == 'a_file':
    path.write_text('a file where the folder should be')
    reason = 'is not a folder'
  else:  # others could put code there that this process would run
    path.mkdir()
    path.chmod(0o777)
    reason = 'may be written by other users'
  with pytest.MonkeyPatch.context() as patch:
    warned = []
    patch.setattr(logging, 'warning', lambda message, *args: warned.append(message % args))
    assert compilation_cache.enable(str(path)) is None
  assert len(warned) == 1 and reason in warned[0] and '\n' not in warned[0], warned
  np.testing.assert_allclose(compile_and_run(2.5), compile_and_run(2.5))
  assert not jax.config.jax_enable_compilation_cache
  if how == 'shared_folder':
    assert os.listdir(path) == []


def test_damaged_entries_cost_a_warning_and_a_compile_never_a_wrong_result(tmp_path, restores_the_suites_cache):
  compilation_cache.enable(str(tmp_path))
  expected = compile_and_run(3.5)
  (entry,) = [p for p in tmp_path.iterdir() if p.name.endswith('-cache')]
  for damaged in (entry.read_bytes()[: entry.stat().st_size // 2], b'not an executable'):
    entry.write_bytes(damaged)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always')
      np.testing.assert_array_equal(compile_and_run(3.5), expected)
    assert [str(w.message).split(':')[0] for w in caught] == [
        "Error reading persistent compilation cache entry for 'jit__lambda'"
    ], [str(w.message) for w in caught]
