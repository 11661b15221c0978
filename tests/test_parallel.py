"""One device and eight (fake CPU devices, in a subprocess) train alike, replicated or with
sharded parameters; steps compile once; a mesh that does not fit is reported (a batch that
does not divide over the devices: test_train.py)."""

import collections
import functools
import json
import os
import pathlib
import subprocess
import sys
from unittest import mock

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from inception_jax import parallel, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.xdist_group('eight_device_runs')  # one worker runs the fixture once
EIGHT_DEVICES = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', PYTHONPATH=str(ROOT))


def run_variants(out: str) -> None:
  """In a process with 8 devices: the same short run on 1 device, on 8, and on 8 with the
  large parameters sharded. Saves each run's losses and final state, and trace counts."""
  from conftest import tiny_config

  traces = collections.Counter()

  def counted(fn):
    @functools.wraps(fn)
    def traced(*args, **kwargs):  # runs only when jax.jit traces the step
      traces[fn.__name__] += 1
      return fn(*args, **kwargs)

    return traced

  results = {}
  for name, fields in [
      ('one', dict(num_devices=1)),
      ('eight', dict(num_devices=8)),
      ('sharded', dict(num_devices=8, shard_params=True, shard_min_size=4096)),
  ]:
    config = tiny_config(
        train_split='train[:2048]',
        eval_split='test[:128]',
        eval_batch_size=64,
        num_train_steps=4,
        log_every_steps=1,
        checkpoint_every_steps=4,
        eval_every_steps=2,
    )
    with config.unlocked():
      config.update(fields)
    workdir = os.path.join(os.path.dirname(out), name)
    traces.clear()
    with (
        mock.patch.object(train, 'train_step', counted(train.train_step)),
        mock.patch.object(train, 'eval_step', counted(train.eval_step)),
    ):
      state, _ = train.train_and_evaluate(config, workdir)
    lines = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
    kernel, mu = state.params['fc1']['kernel'], state.opt_state[0].mu['fc1']['kernel']
    results[name] = {
        'losses': [line['train_loss'] for line in lines if 'train_loss' in line],
        'step_traces': traces['train_step'],
        'eval_traces': traces['eval_step'],
        'kernel_spec': str(kernel.sharding.spec),
        'mu_spec': str(mu.sharding.spec),
        'devices': len(kernel.sharding.device_set),
    }
    flat = {
        jax.tree_util.keystr(k): np.asarray(v)
        for k, v in jax.tree_util.tree_leaves_with_path(
            {'params': state.params, 'batch_stats': state.batch_stats, 'opt_state': state.opt_state}
        )
    }
    np.savez(os.path.join(os.path.dirname(out), f'{name}.npz'), **flat)
  with open(out, 'w') as f:
    json.dump(results, f)


@pytest.fixture(scope='module')
def eight_device_runs(tmp_path_factory):
  out = tmp_path_factory.mktemp('eight') / 'results.json'
  script = f'import sys; sys.path.insert(0, {str(ROOT / "tests")!r}); import test_parallel; test_parallel.run_variants({str(out)!r})'
  run = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=EIGHT_DEVICES, cwd=ROOT)
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads(out.read_text())
  states = {name: dict(np.load(out.parent / f'{name}.npz')) for name in results}
  return results, states


def test_one_and_eight_devices_give_the_same_losses_and_parameters(eight_device_runs):
  results, states = eight_device_runs
  assert results['one']['devices'] == 1 and results['eight']['devices'] == 8
  for name in ('eight', 'sharded'):
    assert len(results[name]['losses']) == 4
    np.testing.assert_allclose(results[name]['losses'], results['one']['losses'], rtol=1e-5)
    assert states[name].keys() == states['one'].keys()
    for key, value in states['one'].items():
      np.testing.assert_allclose(states[name][key], value, rtol=1e-4, atol=1e-6, err_msg=f'{name}: {key}')


def test_shard_params_splits_the_large_kernels_and_their_adam_moments(eight_device_runs):
  results, _ = eight_device_runs
  assert results['eight']['kernel_spec'] == results['eight']['mu_spec'] == str(P())
  # fc1's kernel is 25088 x 32: its first axis goes over the 8 devices, and Adam's moment follows.
  assert results['sharded']['kernel_spec'] == results['sharded']['mu_spec'] == str(P('data', None))


def test_nothing_recompiles_after_the_first_step(eight_device_runs):
  results, _ = eight_device_runs
  for name, result in results.items():
    # 4 steps, 2 evaluations (after step 2 and at the end), 2 checkpoints: one trace each.
    assert (result['step_traces'], result['eval_traces']) == (1, 1), name


def test_param_spec_picks_the_largest_divisible_axis_of_large_arrays():
  assert parallel.param_spec((200_704, 700), 8) == P('data', None)
  assert parallel.param_spec((3, 3, 192, 64), 8, min_size=1000) == P(None, None, 'data', None)
  assert parallel.param_spec((3, 3, 5, 7), 8, min_size=1) == P()  # nothing divisible
  assert parallel.param_spec((700,), 8) == P()  # small: stays replicated
  assert parallel.param_spec((200_704, 700), 1) == P()


def test_mesh_larger_than_the_devices_is_reported():
  with pytest.raises(ValueError, match=r'A mesh of 4 devices does not fit the 1 devices.*num_devices to from 1 to 1'):
    parallel.make_mesh(4)
  assert parallel.make_mesh(-1).shape == {'data': jax.device_count()}
