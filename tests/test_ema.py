"""The papers' training parts (issue 32): a moving average of the weights, evaluated in their
place, and gradient clipping by global norm."""

import os
import shutil
import subprocess
import sys

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT, params_of
from inception_jax import train
from inception_jax.train import optimizer, record, steps


class DenseBN(nn.Module):
  """A dense layer and BatchNorm: weights and statistics, as the moving average holds both."""

  @nn.compact
  def __call__(self, x, *, train):
    x = nn.Dense(3, name='fc')(x.reshape(x.shape[0], -1))
    return nn.BatchNorm(use_running_average=not train, momentum=0.5, name='bn')(x), {}


def tiny_state(ema=True):
  return train.create_train_state(DenseBN(), optax.sgd(0.5), (2, 2, 1), seed=0, ema=ema)


def batch(i):
  images = jax.random.normal(jax.random.PRNGKey(i), (8, 2, 2, 1))
  return {'image': images, 'label': jnp.arange(8) % 3}


def weights(state):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), {'params': state.params, 'batch_stats': state.batch_stats})


@pytest.mark.parametrize('warmup', [False, True])
def test_the_moving_average_after_n_steps_is_its_closed_form(warmup):
  decay, n = 0.8, 6
  state = tiny_state()
  seen = [weights(state)]  # w_0, the average's start
  for i in range(n):
    state, _ = train.train_step(state, batch(i), ema_decay=decay, ema_warmup=warmup)
    seen.append(weights(state))
  # After step k (1-based) the average moved with d_k: decay, or TensorFlow's min(decay, (1 + n) / (10 + n))
  # with n = k - 1 earlier steps. Unrolled: ema_n = prod(d) w_0 + sum_k (1 - d_k) prod_{j > k} d_j w_k.
  d = [min(decay, (1 + k) / (10 + k)) if warmup else decay for k in range(n)]
  coefficient = lambda k: (1 - d[k - 1] if k else 1.0) * np.prod(d[k:])
  expected = jax.tree.map(lambda *w: sum(coefficient(k) * w[k] for k in range(n + 1)), *seen)
  jax.tree.map(lambda e, a: np.testing.assert_allclose(a, e, atol=1e-6), expected, state.ema)
  assert not np.allclose(state.ema['params']['fc']['kernel'], state.params['fc']['kernel'])  # it lags
  assert not np.allclose(state.ema['batch_stats']['bn']['mean'], state.batch_stats['bn']['mean'])


def test_evaluation_uses_the_average_when_asked_and_the_raw_weights_otherwise():
  state = tiny_state()
  for i in range(3):
    state, _ = train.train_step(state, batch(i), ema_decay=0.5)
  test = {**batch(9), 'mask': jnp.ones(8)}
  averaged = state.replace(params=state.ema['params'], batch_stats=state.ema['batch_stats'])
  for key, value in steps.eval_step(state, test, use_ema=True).items():
    np.testing.assert_array_equal(value, steps.eval_step(averaged, test)[key])
  assert steps.eval_step(state, test)['loss_sum'] != steps.eval_step(averaged, test)['loss_sum']


def test_without_an_average_the_state_saves_what_it_always_saved():
  fields = lambda state: list(flax.serialization.to_state_dict(state))
  assert fields(tiny_state(ema=False)) == ['step', 'params', 'batch_stats', 'opt_state', 'dropout_key']
  assert fields(tiny_state()) == fields(tiny_state(ema=False)) + ['ema']


def test_clipping_bounds_the_global_norm_of_the_update(make_config):
  sgd = dict(optimizer='sgd', momentum=0.0, lr_schedule='constant', learning_rate=1.0, warmup_steps=0)
  config = make_config(**sgd, grad_clip_norm=0.5)
  params = {'a': jnp.zeros((3, 4)), 'b': jnp.zeros(5)}
  large = {'a': jnp.full((3, 4), 2.0), 'b': jnp.full(5, -3.0)}  # global norm 9.7
  small = jax.tree.map(lambda g: g / 100, large)

  def update(grads, config=config):
    tx = optimizer.create_optimizer(config)
    return tx.update(grads, tx.init(params), params)[0]

  assert float(optax.global_norm(update(large))) == pytest.approx(0.5, rel=1e-6)
  jax.tree.map(lambda u, g: np.testing.assert_allclose(u, -g, rtol=1e-6), update(small), small)  # under the bound
  off = update(large, make_config(**sgd))
  assert float(optax.global_norm(off)) == pytest.approx(float(optax.global_norm(large)), rel=1e-6)


def test_a_run_with_the_average_resumes_bit_identical(tmp_path, make_config):
  config = make_config(ema_decay=0.9, ema_warmup=True, grad_clip_norm=1.0)
  straight, final = train.train_and_evaluate(config, str(tmp_path / 'a'))
  assert final['evaluated_weights'] == 'moving average'
  assert final['test_accuracy'] != final['test_raw_accuracy']
  # The same run resumed from its step-3 checkpoint.
  shutil.copytree(tmp_path / 'a', tmp_path / 'b')
  shutil.rmtree(tmp_path / 'b' / 'checkpoints' / '6')
  resumed, again = train.train_and_evaluate(config, str(tmp_path / 'b'))
  jax.tree.map(np.testing.assert_array_equal, params_of(resumed), params_of(straight))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.ema), jax.device_get(straight.ema))
  assert {k: v for k, v in again.items() if k != 'train_seconds'} == {
      k: v for k, v in final.items() if k != 'train_seconds'
  }


def test_runs_recorded_before_these_fields_resume_and_a_changed_average_is_refused(make_config):
  current = record.run_record(make_config())
  older = {k: v for k, v in current.items() if k not in record.NEW_FIELDS}
  record.check_resume(older, current, 6, frozenset())  # what those runs did is what the defaults do
  with pytest.raises(record.ConfigChangedError, match=r'ema_decay \(checkpoint 0.0, now 0.999\)'):
    record.check_resume(older, record.run_record(make_config(ema_decay=0.999)), 6, frozenset())
  with pytest.raises(ValueError, match=r'ema_decay must lie in \[0, 1\)'):
    record.check_config(make_config(ema_decay=1.0))


def test_with_sharded_parameters_the_average_is_split_like_them():
  code = """
import jax, numpy as np, optax
from jax.sharding import PartitionSpec
from inception_jax import models, parallel
from inception_jax.train import steps

model = models.create_model('mnist_inception')
tx = optax.adam(1e-3)
mesh = parallel.make_mesh(8)
abstract = jax.eval_shape(lambda: steps.create_train_state(model, tx, (28, 28, 1), 0, ema=True))
shardings = parallel.state_shardings(abstract, mesh, shard_params=True, min_size=4096)
state = steps.initial_state(model, tx, (28, 28, 1), 0, shardings, ema=True)
step = jax.jit(
    lambda s, b: steps.train_step(s, b, ema_decay=0.9), in_shardings=(shardings, None), out_shardings=(shardings, None)
)
images = np.zeros((8, 28, 28, 1), np.float32)
state, _ = step(state, {'image': images, 'label': np.zeros(8, np.int32)})
pieces = lambda tree: jax.tree.map(lambda x: (x.sharding.spec, x.addressable_shards[0].data.shape), tree)
assert pieces(state.ema['params']) == pieces(state.params)
split = [x for x in jax.tree.leaves(state.ema['params']) if x.sharding.spec != PartitionSpec()]
assert split and all(x.addressable_shards[0].data.size * 8 == x.size for x in split)
print('split', len(split))
"""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', PYTHONPATH=str(ROOT))
  run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd=ROOT)
  assert run.returncode == 0 and run.stdout.startswith('split'), run.stderr[-2000:]
