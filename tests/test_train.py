import json
import os
import shutil
import subprocess
import sys
from unittest import mock

import jax
import numpy as np
import pytest

from inception_jax import checkpoint, train


def params_of(state):
  return jax.tree.map(np.asarray, jax.device_get(state.params))


def test_short_real_mnist_run_learns(tmp_path, make_config):
  config = make_config(num_train_steps=60, global_batch_size=64, warmup_steps=5, checkpoint_every_steps=60,
                       eval_split='test[:2000]', eval_batch_size=500)
  workdir = str(tmp_path)
  _, final = train.train_and_evaluate(config, workdir)
  assert final['step'] == 60
  assert final['test_accuracy'] > 0.5  # chance is 0.1
  on_disk = json.load(open(os.path.join(workdir, 'final_metrics.json')))
  assert {'test_accuracy', 'test_loss', 'step', 'train_seconds'} <= set(on_disk)
  assert on_disk['test_accuracy'] == final['test_accuracy']
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert any('train_loss' in l for l in lines) and any('eval_accuracy' in l for l in lines)
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir))


def test_resumed_run_ends_with_the_same_parameters(tmp_path, make_config):
  config = make_config()  # 6 steps, checkpoints at 3 and 6
  uninterrupted, _ = train.train_and_evaluate(config, str(tmp_path / 'a'))

  workdir = tmp_path / 'b'
  train.train_and_evaluate(config, str(workdir))
  # Simulate a run killed after its step-3 checkpoint: step 6 was never written.
  shutil.rmtree(workdir / 'checkpoints' / '6')
  os.remove(workdir / 'final_metrics.json')
  resumed, final = train.train_and_evaluate(config, str(workdir))

  assert final['step'] == 6
  jax.tree.map(np.testing.assert_array_equal, params_of(resumed), params_of(uninterrupted))
  np.testing.assert_array_equal(resumed.opt_state[0].mu['fc1']['kernel'], uninterrupted.opt_state[0].mu['fc1']['kernel'])


def test_finished_run_evaluates_without_training(tmp_path, make_config):
  config = make_config(num_train_steps=3)
  first, _ = train.train_and_evaluate(config, str(tmp_path))
  with mock.patch.object(train.logging, 'info', wraps=train.logging.info) as info:
    again, final = train.train_and_evaluate(config, str(tmp_path))
  assert any('already finished' in call.args[0] for call in info.call_args_list)
  assert final['step'] == 3
  jax.tree.map(np.testing.assert_array_equal, params_of(again), params_of(first))


def test_unreadable_checkpoint_is_reported(tmp_path, make_config):
  config = make_config(num_train_steps=3)
  train.train_and_evaluate(config, str(tmp_path))
  for root, _, files in os.walk(tmp_path / 'checkpoints' / '3' / 'state'):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')
  with pytest.raises(checkpoint.CheckpointError, match='Could not restore the checkpoint of step 3'):
    train.train_and_evaluate(config, str(tmp_path))


def test_non_finite_loss_stops_the_run(tmp_path, make_config):
  config = make_config(learning_rate=1e30, num_train_steps=8, log_every_steps=4, checkpoint_every_steps=4)
  with pytest.raises(FloatingPointError, match='training loss is nan'):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / 'checkpoints' / '4').exists()


def test_command_line_rejects_a_misspelt_config_field(tmp_path):
  run = subprocess.run(
      [sys.executable, '-m', 'experiments.mnist_inception', f'--workdir={tmp_path}', '--config.learning_rat=0.1'],
      capture_output=True, text=True,
  )
  assert run.returncode != 0
  assert 'learning_rat' in run.stderr and 'Did you mean' in run.stderr


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
  np.testing.assert_allclose(weighted['loss'], ce(logits) + 0.3 * (ce(features['aux1']) + ce(features['aux2'])), rtol=1e-6)


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
