import gc
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import warnings
from unittest import mock

import jax
import numpy as np
import pytest
from absl import logging

from conftest import damage, metrics_lines, params_of
from inception_jax import checkpoint, train


def test_short_real_mnist_run_learns(tmp_path, make_config):
  # The tiny config's batches (32; evaluation 250), whose steps the other tests compile too.
  config = make_config(num_train_steps=60, warmup_steps=5, checkpoint_every_steps=60, eval_split='test[:2000]')
  workdir = str(tmp_path)
  _, final = train.train_and_evaluate(config, workdir)
  assert final['step'] == 60
  assert final['test_accuracy'] > 0.7  # chance is 0.1; it reaches 0.758
  on_disk = json.loads(pathlib.Path(workdir, 'final_metrics.json').read_text())
  assert {'test_accuracy', 'test_loss', 'step', 'train_seconds'} <= set(on_disk)
  assert on_disk['test_accuracy'] == final['test_accuracy']
  lines = metrics_lines(workdir)
  assert any('train_loss' in l for l in lines) and any('eval_accuracy' in l for l in lines)
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir))


def test_resumed_run_ends_with_the_same_parameters(tmp_path, make_config, finished_run):
  template, uninterrupted, uninterrupted_mu = finished_run
  workdir = tmp_path / 'run'
  shutil.copytree(template, workdir)
  # A run killed after its step-3 checkpoint: step 6 was never written.
  shutil.rmtree(workdir / 'checkpoints' / '6')
  os.remove(workdir / 'final_metrics.json')
  resumed, final = train.train_and_evaluate(make_config(), str(workdir))

  assert final['step'] == 6
  jax.tree.map(np.testing.assert_array_equal, params_of(resumed), uninterrupted)
  np.testing.assert_array_equal(resumed.opt_state[0].mu['fc1']['kernel'], uninterrupted_mu)


def test_finished_run_evaluates_without_training(tmp_path, make_config, finished_run):
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run[0], workdir)
  with (
      mock.patch.object(logging, 'info', wraps=logging.info) as info,
      warnings.catch_warnings(record=True) as caught,
  ):
    warnings.simplefilter('always', ResourceWarning)
    again, final = train.train_and_evaluate(make_config(), str(workdir))
    gc.collect()
  assert any('already finished' in call.args[0] for call in info.call_args_list)
  assert final['step'] == 6
  jax.tree.map(np.testing.assert_array_equal, params_of(again), finished_run[1])
  # The run closed what it opened (metrics.jsonl, the TensorBoard events): nothing was left to the collector.
  assert [str(w.message) for w in caught if w.category is ResourceWarning and str(workdir) in str(w.message)] == []


@pytest.mark.parametrize(
    'how', ['truncated', 'overwritten', 'missing_metadata', 'garbage_metadata', 'missing_meta', 'empty_step_folder']
)
def test_damaged_latest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
    tmp_path, make_config, finished_run, how
):
  template, uninterrupted, _ = finished_run
  workdir = tmp_path / 'run'
  shutil.copytree(template, workdir)
  damage(workdir / 'checkpoints' / '6', how)
  with mock.patch.object(checkpoint.logging, 'warning', wraps=checkpoint.logging.warning) as warning:
    resumed, final = train.train_and_evaluate(make_config(), str(workdir))
  assert any('step 6' in call.args[0] % call.args[1:] for call in warning.call_args_list)
  assert [p.name.split('-')[:2] for p in (workdir / 'checkpoints_set_aside').iterdir()] == [['6', 'unreadable']]
  assert final['step'] == 6
  jax.tree.map(np.testing.assert_array_equal, params_of(resumed), uninterrupted)  # step 3's, then 3 more steps
  # The steps replayed after the resume are logged once.
  logged = [l['step'] for l in metrics_lines(workdir) if 'train_loss' in l]
  assert logged == sorted(set(logged)) == [2, 3, 4, 6]


def test_a_checkpoint_of_another_model_is_an_error_and_is_kept(tmp_path, make_config, finished_run):
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run[0], workdir)
  config = make_config()
  config.model.widths = (4, 16)
  with pytest.raises(checkpoint.CheckpointMismatchError, match='step 6 .* written for a different model or optimizer'):
    train.train_and_evaluate(config, str(workdir))
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['3', '6'] and not (workdir / 'checkpoints_set_aside').exists()


def test_when_no_checkpoint_is_readable_the_error_says_so(tmp_path, make_config, finished_run):
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run[0], workdir)
  damage(workdir / 'checkpoints' / '6', 'overwritten')
  damage(workdir / 'checkpoints' / '3', 'empty_step_folder')
  with pytest.raises(checkpoint.CheckpointError, match=r'None of the checkpoints .* \(steps \[3, 6\]\) could be read'):
    train.train_and_evaluate(make_config(), str(workdir))
  assert len(list((workdir / 'checkpoints_set_aside').iterdir())) == 2  # moved, never deleted


def test_command_line_reports_a_failure_in_one_line_and_exits_non_zero(tmp_path, finished_run):
  from conftest import tiny_flags

  workdir = tmp_path / 'run'
  shutil.copytree(finished_run[0], workdir)
  damage(workdir / 'checkpoints' / '6', 'truncated')
  damage(workdir / 'checkpoints' / '3', 'missing_meta')
  run = subprocess.run(
      [sys.executable, '-m', 'experiments.mnist_inception', f'--workdir={workdir}', *tiny_flags()],
      capture_output=True,
      text=True,
  )
  assert run.returncode == 1
  assert run.stderr.splitlines()[-1].startswith('error: None of the checkpoints in '), run.stderr[-2500:]
  assert 'Traceback' not in run.stderr and 'Event loop is closed' not in run.stderr, run.stderr[-3000:]


def test_a_synchronous_save_has_written_its_step_when_it_returns(tmp_path):
  # async_checkpoints=False (the MNIST config): no background write holds a host copy while training goes on.
  checkpointer = checkpoint.Checkpointer(str(tmp_path), save_every_steps=1, keep=2, async_save=False)
  try:
    checkpointer.save(1, {'w': jax.numpy.arange(4.0)}, {})
    assert os.listdir(tmp_path) == ['1']  # final, not an .orbax-checkpoint-tmp folder
    assert {'meta', 'state'} <= set(os.listdir(tmp_path / '1'))
  finally:
    checkpointer.close()


def test_resume_from_an_earlier_step_sets_later_ones_aside_once(tmp_path, make_config, finished_run):
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run[0], workdir)
  (workdir / 'checkpoints' / '9.orbax-checkpoint-tmp-1234' / 'state').mkdir(parents=True)  # as a kill in a save leaves
  config = make_config(resume_from_step=3)
  resumed, final = train.train_and_evaluate(config, str(workdir))
  jax.tree.map(np.testing.assert_array_equal, params_of(resumed), finished_run[1])
  assert [p.name.split('-')[:2] for p in (workdir / 'checkpoints_set_aside').iterdir()] == [['6', 'after_3']]
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['3', '6']  # the temporary folder is gone
  # The same command again: the newest checkpoint continues from step 3 already, nothing is rewound.
  train.train_and_evaluate(config, str(workdir))
  assert len(list((workdir / 'checkpoints_set_aside').iterdir())) == 1
  with pytest.raises(checkpoint.CheckpointError, match=r'resume_from_step=4, .* holds steps \[3, 6\]'):
    train.train_and_evaluate(make_config(resume_from_step=4), str(workdir))


def test_divergence_names_the_newest_checkpoint_whose_weights_gave_a_finite_loss(tmp_path, make_config, finished_run):
  # lr 1e4 from the start: step 1's loss is finite, the weights it leaves blow up at step 2.
  config = make_config(
      learning_rate=1e4, warmup_steps=0, lr_schedule='constant', checkpoint_every_steps=1, log_every_steps=1
  )
  with pytest.raises(FloatingPointError, match='step 2.*; no checkpoint of this run precedes it'):
    train.train_and_evaluate(config, str(tmp_path / 'a'))
  assert not os.listdir(tmp_path / 'a' / 'checkpoints')  # step 1's weights were set aside

  # Healthy for 3 steps, then a learning rate that diverges: step 3 is named, and resuming works.
  workdir = tmp_path / 'b'
  shutil.copytree(finished_run[0], workdir)
  shutil.rmtree(workdir / 'checkpoints' / '6')  # the newest is step 3's
  diverging = make_config(
      learning_rate=1e4,
      warmup_steps=0,
      lr_schedule='constant',
      allow_config_change='learning_rate,warmup_steps,lr_schedule',
  )
  with pytest.raises(
      FloatingPointError,
      match='the newest checkpoint whose weights still gave a finite loss is step 3: ' 'lower the learning_rate',
  ):
    train.train_and_evaluate(diverging, str(workdir))
  _, final = train.train_and_evaluate(make_config(), str(workdir))
  assert final['step'] == 6 and np.isfinite(final['test_loss'])


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_a_signal_saves_the_current_step_and_the_rerun_resumes_bit_identical(
    tmp_path, make_config, finished_run, signum
):
  from inception_jax import interrupts, parallel

  shard_batch, calls = parallel.shard_batch, []

  def signal_during_step_4(batch, mesh, **kwargs):
    calls.append(1)
    if len(calls) == 4:
      os.kill(os.getpid(), signum)
    return shard_batch(batch, mesh, **kwargs)

  found = signal.getsignal(signum)  # SIG_IGN for SIGINT when the suite runs as a background job
  with mock.patch.object(parallel, 'shard_batch', signal_during_step_4):
    with pytest.raises(
        interrupts.StopRequested, match=f'Stopped by {signal.Signals(signum).name} after saving step 4'
    ) as stop:
      train.train_and_evaluate(make_config(steps_per_loop=1), str(tmp_path))
  assert stop.value.exit_code == 128 + signum
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '4']
  assert signal.getsignal(signum) == found  # the handler the run found is restored
  resumed, final = train.train_and_evaluate(make_config(), str(tmp_path))
  assert final['step'] == 6
  jax.tree.map(np.testing.assert_array_equal, params_of(resumed), finished_run[1])


@pytest.fixture(scope='module')
def tiny_state():
  """A fresh state of the tiny network (Adam 1e-4) from one jitted call: op by op, its
  initializers would compile dozens of small programs in every test."""
  import optax

  from conftest import tiny_config

  model = train.create_model(tiny_config(), 10)
  return jax.jit(lambda: train.create_train_state(model, optax.adam(1e-4), (28, 28, 1), seed=0))()


def test_the_initial_state_at_o2_is_xlas_default_bit_for_bit(tiny_state):
  # tiny_state: create_train_state jitted at XLA's default optimization (-O3 on CPU).
  import optax

  from conftest import tiny_config

  model = train.create_model(tiny_config(), 10)
  state = train.initial_state(model, optax.adam(1e-4), (28, 28, 1), seed=0)
  arrays = lambda s: (s.step, s.params, s.batch_stats, s.opt_state, s.dropout_key)
  jax.tree.map(np.testing.assert_array_equal, arrays(state), arrays(tiny_state))


def random_batch(n: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {'image': rng.random((n, 28, 28, 1), np.float32), 'label': rng.integers(0, 10, n).astype(np.int32)}


def test_labels_out_of_range_make_the_step_say_so(tiny_state):
  step, batch = jax.jit(train.train_step), random_batch(16)  # the bfloat16 test's float32 step: compiled once
  _, good = step(tiny_state, batch)
  _, bad = step(tiny_state, batch | {'label': np.r_[batch['label'][:15], 10]})
  assert np.isfinite(good['loss']) and good['labels_out_of_range'] == 0
  assert np.isnan(bad['loss']) and bad['labels_out_of_range'] == 1


def test_command_line_rejects_a_misspelt_config_field(tmp_path):
  run = subprocess.run(
      [sys.executable, '-m', 'experiments.mnist_inception', f'--workdir={tmp_path}', '--config.learning_rat=0.1'],
      capture_output=True,
      text=True,
  )
  assert run.returncode == 2
  assert run.stderr.splitlines()[-1] == (
      "error: the config has no field 'learning_rat'; did you mean 'learning_rate'? "
      '--print_config lists every field.'
  )
  assert 'Traceback' not in run.stderr


def test_batch_not_divisible_by_devices_is_reported(tmp_path):
  script = (
      'from experiments.configs import mnist_inception; from inception_jax import train; '
      'config = mnist_inception.get_config(); config.global_batch_size = 12; '
      f'train.train_and_evaluate(config, {str(tmp_path)!r})'
  )
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  run = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env)
  assert run.returncode != 0
  assert 'global_batch_size=12 is not divisible by the 8 devices' in run.stderr


def test_auxiliary_losses_are_added_with_their_weight():
  import flax.linen as nn
  import jax.numpy as jnp
  import optax

  class WithAux(nn.Module):

    @nn.compact
    def __call__(self, x, *, train):
      x = x.reshape(x.shape[0], -1)
      return nn.Dense(3, name='fc')(x), {'aux1': nn.Dense(3, name='aux1')(x), 'aux2': 2 * nn.Dense(3, name='aux2')(x)}

  model, tx = WithAux(), optax.sgd(0.0)
  state = train.create_train_state(model, tx, (2, 2, 1), seed=0)
  batch = {'image': jax.random.normal(jax.random.PRNGKey(1), (4, 2, 2, 1)), 'label': jnp.array([0, 1, 2, 1])}
  logits, features = model.apply({'params': state.params}, batch['image'], train=True)
  ce = lambda z: float(train.cross_entropy(z, batch['label']).mean())
  _, plain = train.train_step(state, batch)
  _, weighted = train.train_step(state, batch, aux_loss_weight=0.3)
  np.testing.assert_allclose(plain['loss'], ce(logits), rtol=1e-6)
  np.testing.assert_allclose(
      weighted['loss'], ce(logits) + 0.3 * (ce(features['aux1']) + ce(features['aux2'])), rtol=1e-6
  )


def test_label_smoothing_exponential_decay_and_weight_decay_of_kernels_only(make_config):
  import jax.numpy as jnp

  logits, labels = jnp.array([[2.0, 0.0, -1.0]]), jnp.array([0])
  targets = np.array([[0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]])
  expected = -(targets * jax.nn.log_softmax(logits)).sum()
  np.testing.assert_allclose(train.cross_entropy(logits, labels, 0.1)[0], expected, rtol=1e-6)
  np.testing.assert_array_equal(train.correct_top_k(jnp.array([[3.0, 2.0, 1.0, 0.0]]), jnp.array([2]), 2), [False])

  config = make_config(lr_schedule='exponential', learning_rate=1.0, warmup_steps=2)
  with config.unlocked():
    config.update(lr_decay_steps=10, lr_decay_rate=0.5)
  schedule = train.learning_rate_schedule(config)
  np.testing.assert_allclose([schedule(s) for s in (1, 2, 11, 12, 22)], [0.5, 1.0, 1.0, 0.5, 0.25])

  params = {'conv': {'kernel': jnp.ones((1, 1, 2, 2)), 'bias': jnp.ones(2)}}
  grads = jax.tree.map(jnp.zeros_like, params)
  for optimizer in ('sgd', 'rmsprop', 'adam'):
    config = make_config(optimizer=optimizer, lr_schedule='constant', warmup_steps=0, learning_rate=0.1)
    with config.unlocked():
      config.weight_decay = 0.5
    tx = train.create_optimizer(config)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(jnp.abs(updates['conv']['kernel']).min()) > 0, optimizer  # decayed
    np.testing.assert_array_equal(updates['conv']['bias'], 0)  # biases are not
  with pytest.raises(ValueError, match="Unknown optimizer 'lamb'"):
    train.create_optimizer(make_config(optimizer='lamb'))


def test_plot_metrics_overlays_runs_in_one_png(tmp_path, finished_run):
  from scripts import plot_metrics

  other = tmp_path / 'other'
  other.mkdir()
  (other / 'metrics.jsonl').write_text(
      '{"step": 2, "train_loss": 1.0, "train_accuracy": 0.5, "learning_rate": 0.1}\n{"step": 4, "tra'
  )
  plot_metrics.plot([str(finished_run[0]), str(other)], str(tmp_path / 'curves.png'))
  assert (tmp_path / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  with pytest.raises(ValueError, match='has no metrics.jsonl'):
    plot_metrics.plot([str(tmp_path)], str(tmp_path / 'none.png'))


def test_several_steps_per_call_train_the_same_and_log_the_same(tmp_path, make_config, finished_run):
  """6 steps, logged every 2, checkpoints at 3 and 6: one step per call, against the finished
  run's calls of up to steps_per_loop (the MNIST config's 10), cut at those steps."""

  def logged(workdir):
    return [(l['step'], l['train_loss']) for l in metrics_lines(workdir) if 'train_loss' in l]

  state, final = train.train_and_evaluate(make_config(steps_per_loop=1), str(tmp_path))
  assert final['step'] == 6 and sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '6']
  several, several_params = finished_run[0], finished_run[1]
  assert make_config().steps_per_loop > 2 and sorted(os.listdir(several / 'checkpoints')) == ['3', '6']
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), params_of(state), several_params)
  assert [s for s, _ in logged(several)] == [2, 3, 4, 6]  # every log step, and the checkpoint's
  np.testing.assert_allclose(logged(tmp_path), logged(several), rtol=1e-5)


def test_bfloat16_compute_keeps_float32_state_and_losses_within_2_percent(make_config, tiny_state):
  batch = random_batch(16)
  losses = {}
  for dtype in ('float32', 'bfloat16'):
    config = make_config()
    config.model.dtype = dtype
    state = tiny_state.replace(apply_fn=train.create_model(config, 10).apply)  # the same float32 parameters
    step = jax.jit(train.train_step)
    losses[dtype] = []
    for _ in range(3):
      state, metrics = step(state, batch)
      losses[dtype].append(float(metrics['loss']))
    assert {x.dtype for x in jax.tree.leaves((state.params, state.opt_state)) if x.ndim} == {np.dtype('float32')}
  np.testing.assert_allclose(losses['bfloat16'], losses['float32'], rtol=2e-2)
  assert losses['float32'][2] < losses['float32'][0]  # the steps learn


def test_evaluation_over_stacked_batches_gives_the_same_metrics(make_config, tiny_state):
  import types

  from inception_jax import data, parallel

  split, state = random_batch(70), tiny_state
  inputs = types.SimpleNamespace(eval_batches=lambda: data.eval_batches(split, 16))  # 5 batches, the last padded
  model = train.create_model(make_config(), 10)
  mesh = parallel.make_mesh()
  eval_fn = jax.jit(train.eval_steps)
  one = train.evaluate(eval_fn, state, inputs, mesh, batches_per_call=1)
  three = train.evaluate(eval_fn, state, inputs, mesh, batches_per_call=3)  # calls of 3 and 2
  assert one == three
  logits, _ = jax.jit(model.apply, static_argnames='train')({'params': state.params}, split['image'], train=False)
  np.testing.assert_allclose(one['accuracy'], np.mean(np.argmax(logits, -1) == split['label']))
