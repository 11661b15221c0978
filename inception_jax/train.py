"""Training and evaluation: train state, pure steps, the loop, metrics, checkpoints.

    state, final_metrics = train_and_evaluate(config, workdir)

is what `python -m experiments.mnist_inception` runs; tests call the same function.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers

from inception_jax import checkpoint as ckpt
from inception_jax import data as data_lib
from inception_jax import finetune, hostmem, interrupts, parallel


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any  # BatchNorm statistics; {} for models without them
  opt_state: Any
  dropout_key: jax.Array  # dropout at step s uses fold_in(dropout_key, s)
  apply_fn: Callable = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def create_model(config: ml_collections.ConfigDict, num_classes: int):
  """The run's model (with config.pretrained, the one its weights belong to: finetune.create_model)."""
  return finetune.create_model(config, num_classes)[0]


def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warmup from 0 to config.learning_rate, then 'cosine' (to 0 at the last step),
  'exponential' (x config.lr_decay_rate every config.lr_decay_steps, the Inception papers')
  or 'constant'."""
  warmup, peak = config.warmup_steps, config.learning_rate
  if config.lr_schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup, decay_steps=max(config.num_train_steps, warmup + 1), end_value=0.0
    )
  if config.lr_schedule == 'exponential':
    return optax.warmup_exponential_decay_schedule(
        0.0, peak, warmup, transition_steps=config.lr_decay_steps, decay_rate=config.lr_decay_rate, staircase=True
    )
  if config.lr_schedule == 'constant':
    if warmup == 0:
      return optax.constant_schedule(peak)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
  raise ValueError(f"Unknown lr_schedule {config.lr_schedule!r}; use 'cosine', 'exponential' or 'constant'.")


def create_optimizer(config) -> optax.GradientTransformation:
  """'adam', 'sgd' (momentum, optionally Nesterov) or 'rmsprop' (TensorFlow 1's, as the
  Inception v3 paper trains: decay 0.9, epsilon 1.0 inside the square root, the mean
  square starting at 1), with the schedule above.

  config.weight_decay > 0 adds weight_decay * w to the gradient of every kernel (arrays of
  rank 2 and up; not biases or BatchNorm scales), as L2 regularization does.
  config.lr_multipliers, e.g. {'fc1': 0.1}, scales the steps of a top-level module's
  parameters (its learning rate, for any of the three optimizers).
  """
  lr = learning_rate_schedule(config)
  if config.optimizer == 'adam':
    tx = optax.adam(lr, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
  elif config.optimizer == 'sgd':
    tx = optax.sgd(lr, momentum=config.momentum, nesterov=config.nesterov)
  elif config.optimizer == 'rmsprop':
    tx = optax.rmsprop(
        lr,
        decay=config.rmsprop_decay,
        eps=config.rmsprop_eps,
        momentum=config.momentum,
        eps_in_sqrt=True,
        initial_scale=1.0,
    )
  else:
    raise ValueError(f"Unknown optimizer {config.optimizer!r}; use 'adam', 'sgd' or 'rmsprop'.")
  weight_decay = config.weight_decay
  if weight_decay:
    kernels = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    tx = optax.chain(optax.add_decayed_weights(weight_decay, mask=kernels), tx)
  for module, factor in config.lr_multipliers.items():
    if factor != 1:
      tx = optax.chain(tx, optax.masked(optax.scale(factor), functools.partial(_module_mask, module)))
  return tx


def _module_mask(module: str, params) -> Any:
  """True for every parameter of the top-level submodule `module` (config.lr_multipliers)."""
  if module not in params:
    raise ValueError(
        f'config.lr_multipliers names {module!r}, which is not a top-level module of the model; '
        f'its modules are {sorted(params)}.'
    )
  return {name: jax.tree.map(lambda _, keep=name == module: keep, subtree) for name, subtree in params.items()}


def create_train_state(model, tx, image_shape, seed: int, pretrained=None) -> TrainState:
  """A fresh state from `seed` (parameters and dropout keys come from separate streams), with
  `pretrained` variables (finetune.create_model's) in place of the initialization's."""
  params_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
  variables = model.init({'params': params_key}, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  variables = finetune.merge(flax.core.unfreeze(variables), pretrained)
  params = variables['params']
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get('batch_stats', {}),
      opt_state=tx.init(params),
      dropout_key=dropout_key,
      apply_fn=model.apply,
      tx=tx,
  )


def initial_state(model, tx, image_shape, seed: int, sharding=None, pretrained=None) -> TrainState:
  """create_train_state as one compiled call, its arrays placed by `sharding` (a pytree of
  shardings, or None for the default device); `pretrained` arrays are its arguments.

  On CPU it compiles with LLVM at -O2 instead of XLA's default -O3: the threefry initializers
  are most of a model's compile time, and at -O2 they compile 1.6-2.4x quicker (a tiny MNIST
  network, widths (4, 8): 4.2 to 1.8 s; the default MNIST network 3.6 to 1.6 s; GoogLeNet 12.7
  to 7.9 s) into the same values, bit for bit (tests/test_train.py checks it; -O0 is 1 ulp off).
  """
  options = {'xla_backend_optimization_level': 2} if jax.default_backend() == 'cpu' else None
  init = lambda pretrained: create_train_state(model, tx, image_shape, seed, pretrained)
  return jax.jit(init, out_shardings=sharding, compiler_options=options)(pretrained)


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Per example; the targets put 1 - label_smoothing on the label, the rest spread evenly."""
  logits = logits.astype(jnp.float32)
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def correct_top_k(logits, labels, k: int):
  """1 where the label is among the k highest logits (all of them when there are fewer)."""
  k = min(k, logits.shape[-1])
  return jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    aux_loss_weight: float = 0.0,
    label_smoothing: float = 0.0,
    frozen_statistics: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a global batch; returns the new state and the batch's metrics.

  The losses of auxiliary classifiers (features whose key starts with 'aux') are added
  with `aux_loss_weight` each (GoogLeNet's paper: 0.3). BatchNorm normalizes with the
  statistics of the whole global batch, however many devices hold it: under jit the
  batch is one array (no per-device statistics, no axis_name). `frozen_statistics` runs the
  network as in evaluation (BatchNorm's running statistics, unchanged; no dropout), as a
  frozen backbone is run under its new head.
  """
  dropout_key = jax.random.fold_in(state.dropout_key, state.step)

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': state.batch_stats}
    if frozen_statistics:
      (logits, features), updates = state.apply_fn(variables, batch['image'], train=False), {}
    else:
      (logits, features), updates = state.apply_fn(
          variables, batch['image'], train=True, rngs={'dropout': dropout_key}, mutable=['batch_stats']
      )
    loss = cross_entropy(logits, batch['label'], label_smoothing).mean()
    for key, aux_logits in features.items():
      if key.startswith('aux') and aux_loss_weight:
        loss += aux_loss_weight * cross_entropy(aux_logits, batch['label'], label_smoothing).mean()
    return loss, (logits, updates.get('batch_stats', state.batch_stats))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  # A jitted step cannot raise: labels outside [0, classes) make the loss NaN (never a wrong
  # finite number) and are counted, so the loop stops and says why.
  labels_out_of_range = jnp.sum((batch['label'] < 0) | (batch['label'] >= logits.shape[-1]))
  loss = jnp.where(labels_out_of_range == 0, loss, jnp.nan)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      batch_stats=batch_stats,
      opt_state=opt_state,
  )
  return state, {
      'loss': loss,
      'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
      'top5_accuracy': jnp.mean(correct_top_k(logits, batch['label'], 5)),
      'labels_out_of_range': labels_out_of_range,
  }


def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Sums over the real (mask 1) examples of a padded batch."""
  logits, _ = state.apply_fn({'params': state.params, 'batch_stats': state.batch_stats}, batch['image'], train=False)
  mask = batch['mask']
  return {
      'loss_sum': jnp.sum(cross_entropy(logits, batch['label']) * mask),
      'correct': jnp.sum((jnp.argmax(logits, -1) == batch['label']) * mask),
      'correct_top5': jnp.sum(correct_top_k(logits, batch['label'], 5) * mask),
      'count': jnp.sum(mask),
  }


def train_steps(state: TrainState, batches: dict[str, jax.Array], **step_args) -> tuple[TrainState, dict]:
  """train_step over batches stacked on a leading axis (one call, one set of step buffers);
  the metrics of each step, stacked."""
  return jax.lax.scan(functools.partial(train_step, **step_args), state, batches)


def eval_steps(state: TrainState, batches: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """eval_step over batches stacked on a leading axis; the sums of each, stacked."""
  return jax.lax.map(functools.partial(eval_step, state), batches)


class JsonlWriter(metric_writers.interface.MetricWriter):
  """Scalars as one JSON object per line, for scripts and plots."""

  def __init__(self, path: str, start_step: int = 0, redo_eval: bool = False):
    """Appends to `path`. A resumed run logs the steps after `start_step` again (and the
    evaluation of `start_step` itself if `redo_eval`), so those lines, and a line cut short by
    a kill, first move to a side file beside it, `metrics.after_<start_step>.<time>.jsonl`:
    nothing logged is ever deleted, and `path` holds every step once."""

    def superseded(line: str) -> bool:
      try:
        logged = json.loads(line)
        return logged['step'] > start_step or (redo_eval and logged['step'] == start_step and _is_eval(logged))
      except (ValueError, KeyError, TypeError):  # a line cut short by a kill
        return True

    if os.path.exists(path):
      with open(path) as f:
        lines = f.readlines()
      later = [line for line in lines if superseded(line)]
      if later:
        stem = os.path.splitext(path)[0]
        with open(f'{stem}.after_{start_step}.{time.strftime("%Y%m%d-%H%M%S")}.jsonl', 'a') as f:
          f.writelines(line if line.endswith('\n') else line + '\n' for line in later)
          f.flush()
          os.fsync(f.fileno())
        with open(path + '.tmp', 'w') as f:
          f.writelines(line for line in lines if not superseded(line))
        os.replace(path + '.tmp', path)
    self._file = open(path, 'a')

  def write_scalars(self, step, scalars):
    self._file.write(json.dumps({'step': int(step), **{k: float(v) for k, v in scalars.items()}}) + '\n')
    self._file.flush()

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def _is_eval(logged: dict) -> bool:
  return any(key.startswith('eval_') for key in logged)


def create_writer(workdir: str, start_step: int = 0, redo_eval: bool = False) -> metric_writers.MetricWriter:
  """TensorBoard events and metrics.jsonl in `workdir` (process 0 only; the loop logs its own lines)."""
  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  return metric_writers.MultiWriter(
      [
          metric_writers.SummaryWriter(workdir),
          JsonlWriter(os.path.join(workdir, 'metrics.jsonl'), start_step, redo_eval),
      ]
  )


def evaluate(eval_fn, state, inputs, mesh, batches_per_call: int = 1, stop=lambda: False) -> dict[str, float] | None:
  """Accuracy, top-5 accuracy and loss over the whole evaluation split. `eval_fn` takes up to
  `batches_per_call` batches stacked on a leading axis and returns the sums of each.

  Returns None if `stop()` turns true: it is asked after every call (one call is in flight
  while the host prepares the next), so a stop waits for at most one more call.
  """
  batches, sums = inputs.eval_batches(), []
  while group := list(itertools.islice(batches, batches_per_call)):
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *group)
    sums.append(eval_fn(state, parallel.shard_batch(stacked, mesh, stacked=True)))
    if len(sums) > 1:
      jax.block_until_ready(sums[-2])
    if stop():
      return None
  totals = jax.tree.map(lambda *xs: float(np.sum(np.concatenate(xs))), *jax.device_get(sums))
  count = totals['count']
  return {
      'accuracy': totals['correct'] / count,
      'top5_accuracy': totals['correct_top5'] / count,
      'loss': totals['loss_sum'] / count,
  }


def resolve_config(config: ml_collections.ConfigDict, num_train_examples: int | None) -> ml_collections.ConfigDict:
  """A copy of `config` with its -1 sentinels derived (experiments/configs/default.py), the one place
  where that happens: steps, warmup, decay and evaluation steps from epochs of
  `num_train_examples` at global_batch_size, the learning rate by the linear scaling rule."""
  config = ml_collections.ConfigDict(config.to_dict())
  needs_epochs = [f for f in ('num_train_steps', 'warmup_steps') if config[f] == -1]
  if config.lr_decay_steps == -1 and config.lr_schedule == 'exponential':
    needs_epochs.append('lr_decay_steps')
  if config.eval_every_steps == -1 and config.eval_every_epochs > 0:
    needs_epochs.append('eval_every_steps')
  if needs_epochs and not num_train_examples:
    raise ValueError(f'{", ".join(needs_epochs)} must be given in steps: dataset {config.dataset!r} has no epochs.')
  steps = lambda epochs: max(round(epochs * num_train_examples / config.global_batch_size), 0)
  if config.num_train_steps == -1:
    config.num_train_steps = max(steps(config.num_epochs), 1)
  if config.warmup_steps == -1:
    config.warmup_steps = steps(config.warmup_epochs)
  if 'lr_decay_steps' in needs_epochs:
    config.lr_decay_steps = max(steps(config.lr_decay_epochs), 1)
  if config.eval_every_steps == -1:
    config.eval_every_steps = max(steps(config.eval_every_epochs), 1) if config.eval_every_epochs > 0 else 0
  if config.learning_rate == -1:
    config.learning_rate = config.base_learning_rate * config.global_batch_size / config.base_batch_size
  return config


# Fields that say how a run is operated, not what it computes: a resume may change them freely.
OPERATIONAL_FIELDS = frozenset(
    {
        'data_dir',
        'manual_dir',
        'eval_split',
        'eval_batch_size',
        'eval_crop_fraction',
        'eval_every_steps',
        'eval_every_epochs',
        'log_every_steps',
        'checkpoint_every_steps',
        'keep_checkpoints',
        'async_checkpoints',
        'resume_from_step',
        'allow_config_change',
        'steps_per_loop',
        'num_devices',
        'shard_params',
        'shard_min_size',
    }
)


class ConfigChangedError(ValueError):
  """A resume under a config that would continue a different run."""


def run_record(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{dotted field: value} of every field of a resolved config that fixes what the run computes
  (its data stream, model and optimization), as JSON values: every checkpoint records it."""

  def flat(tree, prefix=''):
    for name, value in tree.items():
      if isinstance(value, dict):
        yield from flat(value, f'{prefix}{name}.')
      elif f'{prefix}{name}' not in OPERATIONAL_FIELDS:
        yield f'{prefix}{name}', value

  return json.loads(json.dumps(dict(flat(config.to_dict())), default=str))


def check_resume(saved: dict[str, Any], current: dict[str, Any], step: int, allow_change: bool) -> None:
  """Refuses (ConfigChangedError) to resume the checkpoint of `step`, recorded as `saved`, under a
  config whose run_record differs, unless `allow_change`: then it warns."""
  unset = '(unset)'
  differ = sorted(k for k in saved.keys() | current.keys() if saved.get(k, unset) != current.get(k, unset))
  if not differ:
    return
  what = ', '.join(f'{k} (checkpoint {saved.get(k, unset)!r}, now {current.get(k, unset)!r})' for k in differ[:4])
  what += f' and {len(differ) - 4} more' if len(differ) > 4 else ''
  if allow_change:
    logging.warning('Resuming step %d under a changed config, as allow_config_change says: %s.', step, what)
    return
  raise ConfigChangedError(
      f'The checkpoint of step {step} was written under another config: {what}. Resuming would continue a '
      'different run: run with the values it was written with, use a new --workdir, or pass '
      '--config.allow_config_change=True to take the change knowingly.'
  )


def _check_config(config) -> None:
  if config.num_train_steps <= 0:
    raise ValueError(f'num_train_steps must be positive, got {config.num_train_steps}.')
  for field in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints', 'steps_per_loop'):
    if config[field] <= 0:
      raise ValueError(f'{field} must be positive, got {config[field]}.')


def _train(config, state, step, train_seconds, record, steps, run_eval, inputs, mesh, checkpointer, writer, signals):
  """The training loop from `step`: logs, evaluates and checkpoints; stops on a signal after saving.

  `record` goes into every checkpoint's meta; `steps` is (p_train_steps, schedule). Returns
  (state, step, train_seconds) at config.num_train_steps. Raises StopRequested after a SIGTERM
  or SIGINT (the step reached is saved; an evaluation it cut short is marked pending, and runs
  first on resume), FloatingPointError on a non-finite loss (naming the newest checkpoint
  whose weights still gave a finite loss).
  """
  p_train_steps, schedule = steps
  pending: list[dict[str, jax.Array]] = []  # metrics of steps not yet logged, still on device
  window_start, window_step = time.perf_counter(), step

  def flush_metrics(step: int) -> None:
    nonlocal window_start, window_step
    if not pending:
      return
    per_step = [jax.tree.map(lambda x, i=i: x[i], m) for m in jax.device_get(pending) for i in range(len(m['loss']))]
    pending.clear()
    first = step - len(per_step) + 1
    for i, metrics in enumerate(per_step):
      if metrics['labels_out_of_range']:
        raise ValueError(
            f'The batch of step {first + i} has labels outside [0, {inputs.num_classes}): fix the dataset '
            f"or the model's num_classes."
        )
      if not np.isfinite(metrics['loss']):
        _diverged(f'The training loss is {metrics["loss"]} at step {first + i}', first + i - 1, checkpointer)
    metrics = jax.tree.map(lambda *xs: float(np.mean(xs)), *per_step)
    metrics.pop('labels_out_of_range')
    now = time.perf_counter()
    steps_per_sec = (step - window_step) / (now - window_start)
    window_start, window_step = now, step
    eta = (config.num_train_steps - step) / max(steps_per_sec, 1e-9)
    lr = float(schedule(step - 1))
    logging.info(
        'step %d/%d  loss %.4f  accuracy %.4f  %.1f images/s  lr %.2e  ETA %s',
        step,
        config.num_train_steps,
        metrics['loss'],
        metrics['accuracy'],
        steps_per_sec * config.global_batch_size,
        lr,
        time.strftime('%H:%M:%S', time.gmtime(eta)),
    )
    writer.write_scalars(
        step,
        {f'train_{k}': v for k, v in metrics.items()}
        | {'learning_rate': lr, 'images_per_sec': steps_per_sec * config.global_batch_size},
    )

  batches = inputs.train_batches(step)
  first_step = step
  while step < config.num_train_steps:
    start = time.perf_counter()
    k = _steps_in_call(config, step)
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *[next(batches) for _ in range(k)])
    batch = parallel.shard_batch(stacked, mesh, stacked=True)
    if step == first_step:
      # Compiled apart from running: a signal during the first compile stops the run before any step.
      p_train_steps.lower(state, batch).compile()
      signals.training()
    state, metrics = p_train_steps(state, batch)
    pending.append(metrics)
    step += k
    if step == first_step + k:
      hostmem.release_freed_memory()  # what initialization and compilation used
    last = step == config.num_train_steps
    stop = not last and _stop_requested(signals, checkpointer, range(step - k + 1, step + 1))
    save = last or stop or checkpointer.should_save(step)
    if save or step % config.log_every_steps == 0:
      flush_metrics(step)  # also guards the checkpoint against non-finite losses
      checkpointer.check_for_errors()  # a background save that failed says so now
    train_seconds += time.perf_counter() - start
    eval_due = config.eval_every_steps > 0 and step % config.eval_every_steps == 0 and not last
    eval_pending = eval_due and stop
    if eval_due and not stop and run_eval(state, step) is None:  # a signal during the evaluation
      eval_pending = stop = save = True
      flush_metrics(step)
    if save:
      hostmem.release_freed_memory()  # the steps' temporaries make room for the checkpoint's host copy
      meta = record | {'train_seconds': train_seconds, 'eval_pending': eval_pending}
      try:
        checkpointer.save(step, state, meta)
      except ckpt.NonFiniteStateError as e:
        _diverged(f'The training diverged: {e}', step - 1, checkpointer)  # the update from step - 1 blew up
      if not config.async_checkpoints:
        hostmem.release_freed_memory()  # the written host copy
    if stop:
      raise _stopped(signals, checkpointer, step)
  checkpointer.wait()
  return state, step, train_seconds


def _stop_requested(signals, checkpointer, steps) -> bool:
  """Whether every process stops after this call: one process, its own signal; several, JAX's
  preemption service's agreement on a step of this call (or, with the service off, the flags
  of all processes)."""
  if interrupts.preemption_service():
    return any(checkpointer.reached_preemption(s) for s in steps)
  return interrupts.any_process(signals.received is not None)


def _stopped(signals, checkpointer, step: int) -> interrupts.StopRequested:
  checkpointer.wait()
  signum = signals.received or signal.SIGTERM
  return interrupts.StopRequested(
      f'Stopped by {signal.Signals(signum).name} after saving step {step} in {checkpointer.directory}; '
      'run the same command to resume from it.',
      signum,
  )


def _steps_in_call(config, step: int) -> int:
  """config.steps_per_loop, cut short at the next step that logs, saves, evaluates or ends the run."""
  ends = [config.num_train_steps, step + config.steps_per_loop]
  for every in (config.log_every_steps, config.checkpoint_every_steps, config.eval_every_steps):
    if every > 0:
      ends.append((step // every + 1) * every)
  return min(ends) - step


def _diverged(what: str, first_bad_state: int, checkpointer) -> None:
  """Sets aside the checkpoints from `first_bad_state` on and raises FloatingPointError naming
  the newest one left, whose weights still gave a finite loss.

  The loss of step s is computed on the state of step s - 1, so a non-finite loss at step s
  condemns the states from s - 1 on.
  """
  checkpointer.wait()
  for step in checkpointer.all_steps():
    if step >= first_bad_state:
      checkpointer.set_aside(step, 'diverged', 'its weights gave a non-finite loss')
  healthy = checkpointer.latest_step()
  advice = (
      f'the newest checkpoint whose weights still gave a finite loss is step {healthy}: lower the learning_rate '
      '(or add warmup_steps) and add --config.allow_config_change=True to resume from it.'
      if healthy is not None
      else 'no checkpoint of this run precedes it: lower the learning_rate (or add warmup_steps) and run again to '
      'start over.'
  )
  raise FloatingPointError(f'{what}; {advice}')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> tuple[TrainState, dict[str, Any]]:
  """Trains (resuming from `workdir`'s latest checkpoint), evaluates, writes final_metrics.json.

  With several processes (parallel.initialize_distributed first), every process calls this
  with the same config and workdir, on a filesystem they share: each reads its part of the
  data, all write the checkpoints together, and process 0 alone writes the metrics files.
  config.global_batch_size is the batch of one step over all devices of all processes.
  """
  # From here on a signal stops the run: at once until training starts, then after saving.
  signals = interrupts.StopSignals().__enter__()
  checkpointer = writer = None
  try:  # the handlers, the checkpointer's threads and the metric files are released on every way out
    os.makedirs(workdir, exist_ok=True)
    mesh = parallel.make_mesh(config.num_devices)
    parallel.check_batch_divisible(config.global_batch_size, mesh)
    parallel.check_batch_divisible(config.eval_batch_size, mesh, 'eval_batch_size')

    inputs = data_lib.create_input(config, jax.process_index(), jax.process_count())
    config = resolve_config(config, inputs.num_train_examples)
    _check_config(config)
    model, pretrained = finetune.create_model(config, inputs.num_classes)
    tx = create_optimizer(config)
    if config.trainable == 'head':
      tx = finetune.freeze(tx, model)
    schedule = learning_rate_schedule(config)  # for logging
    init = lambda: create_train_state(model, tx, inputs.image_shape, config.seed)
    abstract_state = jax.eval_shape(init)
    state_sharding = parallel.state_shardings(
        abstract_state,
        mesh,
        shard_params=config.shard_params,
        min_size=config.shard_min_size,
    )

    # The one place where steps are compiled. The state is donated: its buffers are reused. A call
    # runs up to config.steps_per_loop steps over stacked batches (evaluation: that many batches),
    # so that one set of step buffers serves them all (one compilation per number of steps).
    p_train_steps = jax.jit(
        functools.partial(
            train_steps,
            aux_loss_weight=config.aux_loss_weight,
            label_smoothing=config.label_smoothing,
            frozen_statistics=config.trainable == 'head',
        ),
        in_shardings=(state_sharding, parallel.batch_sharding(mesh, stacked=True)),
        out_shardings=(state_sharding, parallel.replicated(mesh)),
        donate_argnums=0,
    )
    p_eval_steps = jax.jit(
        eval_steps,
        in_shardings=(state_sharding, parallel.batch_sharding(mesh, stacked=True)),
        out_shardings=parallel.replicated(mesh),
    )

    checkpointer = ckpt.Checkpointer(
        os.path.join(workdir, 'checkpoints'),
        save_every_steps=config.checkpoint_every_steps,
        keep=config.keep_checkpoints,
        async_save=config.async_checkpoints,
    )
    restored = checkpointer.restore(
        ckpt.abstract_with_shardings(abstract_state, state_sharding), rewind_to=config.resume_from_step
    )
    record = {'config': run_record(config)}
    if restored is None:
      state, meta = initial_state(model, tx, inputs.image_shape, config.seed, state_sharding, pretrained), {}
      logging.info('Starting from %s in %s.', f'weights {config.pretrained}' if pretrained else 'scratch', workdir)
    else:
      state, meta = restored
      check_resume(meta.get('config', {}), record['config'], int(state.step), config.allow_config_change)
      logging.info('Resumed from the checkpoint of step %d in %s.', int(state.step), checkpointer.directory)
    pretrained = None  # the state holds what it needs
    step = int(state.step)
    if step >= config.num_train_steps:
      logging.info('This run already finished (step %d of %d); evaluating only.', step, config.num_train_steps)
    # Saved with every checkpoint after a rewind, so that rerunning the same command resumes.
    record['resumed_from'] = config.resume_from_step if config.resume_from_step >= 0 else meta.get('resumed_from', -1)
    num_params = sum(x.size for x in jax.tree.leaves(abstract_state.params))
    logging.info(
        'Run: %s (%s parameters) on %d %s device(s), %s %s (%s examples), step %d of %d at batch %d, in %s.',
        config.model.name,
        f'{num_params:,}',
        mesh.size,
        jax.devices()[0].platform.upper(),
        config.dataset,
        config.train_split,
        f'{inputs.num_train_examples:,}' if inputs.num_train_examples else 'no',
        step,
        config.num_train_steps,
        config.global_batch_size,
        workdir,
    )
    # A step whose evaluation a signal stopped, and a finished run's last step, are evaluated
    # again: an earlier line of that evaluation moves aside.
    eval_pending = bool(meta.get('eval_pending'))
    writer = create_writer(workdir, step, redo_eval=eval_pending or step >= config.num_train_steps)
    if step == 0:
      writer.write_hparams({k: v for k, v in config.to_dict().items() if not isinstance(v, dict)})

    def run_eval(state, step: int) -> dict[str, float] | None:
      """The evaluation's metrics, logged; None if a signal stopped it (JAX's preemption service
      agrees on training steps only: with it, an evaluation runs to its end)."""
      hostmem.release_freed_memory()  # the training steps' temporaries make room for the evaluation's
      start = time.perf_counter()
      stop = lambda: not interrupts.preemption_service() and interrupts.any_process(signals.received is not None)
      metrics = evaluate(p_eval_steps, state, inputs, mesh, config.steps_per_loop, stop)
      if metrics is None:
        logging.warning('The evaluation of step %d was stopped; it runs first when the run resumes.', step)
        return None
      logging.info(
          'eval at step %d: accuracy %.4f  top-5 %.4f  loss %.4f  (%d examples, %.1fs)',
          step,
          metrics['accuracy'],
          metrics['top5_accuracy'],
          metrics['loss'],
          inputs.num_eval_examples,
          time.perf_counter() - start,
      )
      writer.write_scalars(step, {f'eval_{k}': v for k, v in metrics.items()})
      return metrics

    train_seconds = float(meta.get('train_seconds', 0.0))
    if eval_pending:  # a signal stopped this step's evaluation
      signals.training()
      if run_eval(state, step) is None:
        raise _stopped(signals, checkpointer, step)
    state, step, train_seconds = _train(
        config,
        state,
        step,
        train_seconds,
        record,
        (p_train_steps, schedule),
        run_eval,
        inputs,
        mesh,
        checkpointer,
        writer,
        signals,
    )
    signals.training()  # a finished run that only evaluates
    eval_metrics = run_eval(state, step)
    if eval_metrics is None:
      raise _stopped(signals, checkpointer, step)
    final = {
        'test_accuracy': eval_metrics['accuracy'],
        'test_top5_accuracy': eval_metrics['top5_accuracy'],
        'test_loss': eval_metrics['loss'],
        'step': step,
        'train_seconds': round(train_seconds, 2),
        'num_params': num_params,
        'model': config.model.name,
        'devices': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
    }
    if jax.process_index() == 0:  # whole or not at all, still under the signal handlers
      path = os.path.join(workdir, 'final_metrics.json')
      with open(path + '.tmp', 'w') as f:
        json.dump(final, f, indent=2)
      os.replace(path + '.tmp', path)
  finally:
    if writer is not None:
      writer.close()
    if checkpointer is not None:
      checkpointer.close()
    signals.__exit__()

  logging.info(
      'Done: test accuracy %.4f (top-5 %.4f), loss %.4f after %d steps, %.0f s of training. Files in %s: '
      'final_metrics.json, metrics.jsonl, TensorBoard events, checkpoints/.',
      final['test_accuracy'],
      final['test_top5_accuracy'],
      final['test_loss'],
      step,
      train_seconds,
      workdir,
  )
  return state, final
