"""Two real processes on localhost of 4 fake CPU devices each, joined by jax.distributed with
CPU collectives, train on the 8 devices with replicated parameters, checkpoint, resume with the
large parameters sharded over the 8, save together on a SIGTERM to one of them, and end where
one process on one device does; each step compiles once (the mesh arithmetic: test_parallel.py).
When one process alone cannot read a checkpoint, both agree before anything is moved."""

import collections
import functools
import json
import os
import pathlib
import re
import shutil
import signal
from unittest import mock

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import PartitionSpec as P

import processes
from conftest import metrics_lines

from inception_jax import checkpoint, train


def config_for_test(num_train_steps, **fields):
  from conftest import tiny_config

  # A constant schedule after warmup: stopping at step 2 and going on follows the same
  # learning rates as one run.
  return tiny_config(
      train_split='train[:2048]',
      eval_split='test[:256]',
      eval_batch_size=128,
      lr_schedule='constant',
      num_train_steps=num_train_steps,
      log_every_steps=1,
      checkpoint_every_steps=2,
      async_checkpoints=True,  # as on accelerators (the MNIST config writes synchronously)
      **fields,
  )


def worker(coordinator: str, process_id: int, workdir: str) -> None:
  """One of two processes: a replicated run of 2 steps, then a fresh start with the large
  parameters sharded that resumes from its checkpoint and is stopped by a SIGTERM to process 1
  alone. Prints, per run, the traces of the steps and the layout of fc1's kernel and its Adam
  moment in the checkpoints it saved."""
  from absl import logging

  from inception_jax import interrupts, parallel

  logging.set_verbosity(logging.INFO)
  parallel.initialize_distributed(coordinator, 2, process_id)
  assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 8, 4)
  traces, saved, save = collections.Counter(), [], checkpoint.Checkpointer.save

  def counted(fn):
    @functools.wraps(fn)
    def traced(*args, **kwargs):  # runs only when jax.jit traces the step
      traces[fn.__name__] += 1
      return fn(*args, **kwargs)

    return traced

  def recorded_save(self, step, state, meta):
    kernel, mu = state.params['fc1']['kernel'], state.opt_state[0].mu['fc1']['kernel']
    saved.append((str(kernel.sharding.spec), str(mu.sharding.spec), len(kernel.sharding.device_set)))
    return save(self, step, state, meta)

  # Resumed at step 2, a SIGTERM to process 1 alone during step 4: JAX's preemption service
  # makes both save one step and stop.
  shard_batch, calls = parallel.shard_batch, []

  def sigterm_during_step_4(batch, mesh, **kwargs):
    calls.append(1)
    if process_id == 1 and len(calls) == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return shard_batch(batch, mesh, **kwargs)

  runs = {}
  # Goes on from the replicated run's 2 steps to 10: a longer run (shard_params is operational).
  sharded_config = config_for_test(10, shard_params=True, shard_min_size=4096)
  with (
      mock.patch.object(train.steps, 'train_step', counted(train.steps.train_step)),
      mock.patch.object(train.steps, 'eval_step', counted(train.steps.eval_step)),
      mock.patch.object(checkpoint.Checkpointer, 'save', recorded_save),
  ):
    _, final = train.train_and_evaluate(config_for_test(2), workdir)
    assert final['step'] == 2
    runs['replicated'] = dict(traces=dict(traces), saved=list(saved))
    traces.clear()
    saved.clear()
    try:
      with mock.patch.object(parallel, 'shard_batch', sigterm_during_step_4):
        train.train_and_evaluate(sharded_config, workdir)
      raise AssertionError('not stopped')
    except interrupts.StopRequested as e:
      print(f'process {process_id}: {e}', flush=True)
    runs['sharded'] = dict(traces=dict(traces), saved=list(saved))
  print(f'process {process_id} runs: {json.dumps(runs)}', flush=True)
  restore_where_one_process_fails(process_id, workdir, sharded_config)
  jax.distributed.shutdown()


def restore_where_one_process_fails(process_id: int, workdir: str, config) -> None:
  """On a copy of the run: process 1 alone cannot read the newest checkpoint, first for a reason of
  the environment (both stop, nothing moves), then because its files are damaged (both set that
  step aside and restore the one before). Prints what each process saw."""
  from jax.experimental import multihost_utils

  copy = pathlib.Path(workdir + '_copy')
  if process_id == 0:
    shutil.copytree(workdir, copy)
  multihost_utils.sync_global_devices('copied')
  steps = sorted(int(s) for s in os.listdir(copy / 'checkpoints'))
  restore = ocp.CheckpointManager.restore

  def failing_on_process_1(error):
    def read(self, step, *args, **kwargs):
      if process_id == 1 and step == steps[-1] and 'state' in kwargs['args'].keys():
        raise error
      return restore(self, step, *args, **kwargs)

    return mock.patch.object(ocp.CheckpointManager, 'restore', read)

  with failing_on_process_1(PermissionError(13, 'Permission denied')):
    try:
      train.train_and_evaluate(config, str(copy))
      raise AssertionError('restored')
    except checkpoint.CheckpointReadError as e:
      print(f'process {process_id} environment: {e}', flush=True)
  multihost_utils.sync_global_devices('environment')
  print(f'process {process_id} after environment: {sorted(os.listdir(copy))}', flush=True)

  config = ml_collections.ConfigDict(config.to_dict())
  config.num_train_steps = steps[-2]  # restore, evaluate only
  with failing_on_process_1(ValueError('DATA_LOSS: Error reading "params.fc1.kernel/0.0" in OCDBT database')):
    _, final = train.train_and_evaluate(config, str(copy))
  set_aside = sorted(p.name.split('-')[0] for p in (copy / 'checkpoints_set_aside').iterdir())
  print(f'process {process_id} damage: restored {final["step"]} of {steps}, set aside {set_aside}', flush=True)


def test_two_processes_train_checkpoint_resume_and_match_one(tmp_path):
  workdir = tmp_path / 'two'
  outputs = processes.run_two('test_distributed', 'worker', str(workdir), devices_each=4)
  assert 'Resumed from the checkpoint of step 2' in outputs[0] + outputs[1]
  for out in outputs:
    runs = json.loads(re.search(r'process \d runs: (.*)', out)[1])
    # One trace of each step for all its steps, evaluations and checkpoints.
    assert runs['replicated']['traces'] == {'train_step': 1, 'eval_step': 1}, runs
    assert runs['sharded']['traces'] == {'train_step': 1}, runs  # stopped before evaluating
    # fc1's kernel is 25088 x 32: sharded, its first axis goes over the 8 devices, and Adam's moment follows.
    assert runs['replicated']['saved'] == [[str(P()), str(P()), 8]], runs
    sharded = [str(P('data', None)), str(P('data', None)), 8]
    assert runs['sharded']['saved'] and all(spec == sharded for spec in runs['sharded']['saved']), runs
  # Process 1 alone could not read the newest checkpoint: from the environment, both stopped and
  # nothing moved; from damage, both set it aside and restored the one before.
  for i, out in enumerate(outputs):
    assert re.search(
        r'environment: (Process 1 could not read|The checkpoint of step \d+ .* could not be read)', out
    ), out
    listing = re.search(rf'process {i} after environment: (.*)', out)[1]
    assert 'checkpoints_set_aside' not in listing and 'checkpoints' in listing, listing
    steps, set_aside = re.search(r'damage: restored \d+ of (\[.*\]), set aside (\[.*\])', out).groups()
    steps = json.loads(steps)
    assert f'damage: restored {steps[-2]} of' in out and json.loads(set_aside.replace("'", '"')) == [str(steps[-1])]
  stopped = [re.findall(r'process \d: Stopped by SIGTERM after saving step (\d+)', out) for out in outputs]
  assert stopped[0] == stopped[1] and len(stopped[0]) == 1 and int(stopped[0][0]) >= 4, outputs[0][-3000:]
  assert str(int(stopped[0][0])) in os.listdir(workdir / 'checkpoints')
  saved = int(stopped[0][0])

  single, _ = train.train_and_evaluate(config_for_test(saved), str(tmp_path / 'one'))

  # The step the processes saved on SIGTERM holds the state one process reaches.
  checkpointer = checkpoint.Checkpointer(str(workdir / 'checkpoints'), save_every_steps=2, keep=2)
  restored, _ = checkpointer.restore(
      checkpoint.abstract_with_shardings(single, jax.tree.map(lambda x: x.sharding, single))
  )
  checkpointer.close()
  # 8 devices sum in another order than one: after Adam's steps a few of fc1's 802,816 weights
  # (about 6e-3 in size) differ by up to 3.3e-6. A step that did not average the devices'
  # gradients, or trained on the wrong shard, moves weights by about the learning rate (2e-3).
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(single)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)

  # Process 0 alone wrote the metrics: each step's loss once, equal to one process's.
  def losses(folder):
    return [(line['step'], line['train_loss']) for line in metrics_lines(folder) if 'train_loss' in line]

  two, one = losses(workdir), losses(tmp_path / 'one')
  assert [s for s, _ in two] == [s for s, _ in one] == list(range(1, saved + 1))
  np.testing.assert_allclose([v for _, v in two], [v for _, v in one], rtol=1e-5)
  final = json.loads((workdir / 'final_metrics.json').read_text())  # written at step 2
  assert final['devices'].startswith('8 x ') and final['step'] == 2
