"""The loop: train_and_evaluate(config, workdir) from a config to a checkpoint and final_metrics.json."""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from inception_jax import checkpoint as ckpt
from inception_jax import data as data_lib
from inception_jax import compilation_cache, files, finetune, hostmem, interrupts, parallel
from inception_jax.models import convert
from inception_jax.train import optimizer, record, steps, writers


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


def _train(
    config, state, step, train_seconds, run_info, compiled, run_eval, inputs, mesh, checkpointer, writer, signals
):
  """The training loop from `step`: logs, evaluates and checkpoints; stops on a signal after saving.

  `run_info` goes into every checkpoint's meta; `compiled` is (p_train_steps, schedule). Returns
  (state, step, train_seconds) at config.num_train_steps. Raises StopRequested after a SIGTERM
  or SIGINT (the step reached is saved; an evaluation it cut short is marked pending, and runs
  first on resume), FloatingPointError on a non-finite loss (naming the newest checkpoint
  whose weights still gave a finite loss).
  """
  p_train_steps, schedule = compiled
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
      meta = run_info | {'train_seconds': train_seconds, 'eval_pending': eval_pending}
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


def _stop_requested(signals, checkpointer, step_range) -> bool:
  """Whether every process stops after this call: one process, its own signal; several, JAX's
  preemption service's agreement on a step of this call (or, with the service off, the flags
  of all processes)."""
  if interrupts.preemption_service():
    return any(checkpointer.reached_preemption(s) for s in step_range)
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
      '(or add warmup_steps) and name what you changed to resume from it (e.g. '
      '--config.allow_config_change=learning_rate,warmup_steps).'
      if healthy is not None
      else 'no checkpoint of this run precedes it: lower the learning_rate (or add warmup_steps) and run again to '
      'start over.'
  )
  raise FloatingPointError(f'{what}; {advice}')


def _compile(config, state_sharding, mesh):
  """(p_train_steps, p_eval_steps): the one place where steps are jitted.

  The state is donated: its buffers are reused. A call runs up to config.steps_per_loop steps
  over stacked batches (evaluation: that many batches), so that one set of step buffers serves
  them all (one compilation per number of steps).
  """
  batches = parallel.batch_sharding(mesh, stacked=True)
  p_train_steps = jax.jit(
      functools.partial(
          steps.train_steps,
          aux_loss_weight=config.aux_loss_weight,
          label_smoothing=config.label_smoothing,
          frozen_statistics=config.trainable == 'head',
          ema_decay=config.ema_decay,
          ema_warmup=config.ema_warmup,
      ),
      in_shardings=(state_sharding, batches),
      out_shardings=(state_sharding, parallel.replicated(mesh)),
      donate_argnums=0,
  )
  p_eval_steps = {  # by the weights they evaluate
      weights: jax.jit(
          functools.partial(steps.eval_steps, use_ema=weights == 'ema'),
          in_shardings=(state_sharding, batches),
          out_shardings=parallel.replicated(mesh),
      )
      for weights in (('raw', 'ema') if config.ema_decay else ('raw',))
  }
  return p_train_steps, p_eval_steps


def _listdir(folder: str) -> list[str]:
  return os.listdir(folder) if os.path.isdir(folder) else []


def _log_run(config, num_params: int, mesh, inputs, step: int, workdir: str) -> None:
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> tuple[steps.TrainState, dict[str, Any]]:
  """Trains (resuming from `workdir`'s latest checkpoint), evaluates, writes final_metrics.json.

  With several processes (parallel.initialize_distributed first), every process calls this
  with the same config and workdir, on a filesystem they share: each reads its part of the
  data, all write the checkpoints together, and process 0 alone writes the metrics files.
  config.global_batch_size is the batch of one step over all devices of all processes.
  """
  # From here on a signal stops the run: at once until training starts, then after saving.
  signals = interrupts.StopSignals().__enter__()
  checkpointer = writer = None
  held = contextlib.ExitStack()
  try:  # the handlers, the checkpointer's threads and the metric files are released on every way out
    record.check_config(config)
    mesh = parallel.make_mesh(config.num_devices)
    parallel.check_batch_divisible(config.global_batch_size, mesh)
    parallel.check_batch_divisible(config.eval_batch_size, mesh, 'eval_batch_size')
    if os.path.exists(workdir) and not os.path.isdir(workdir):
      raise ValueError(f'--workdir={workdir} is a file; give a folder (a new one starts a new run).')
    checkpoints = os.path.join(workdir, 'checkpoints')
    resuming = any(name.isdigit() for name in _listdir(checkpoints))
    if config.resume_from_step >= 0 and not resuming:
      raise ckpt.CheckpointError(
          f'resume_from_step={config.resume_from_step}, but {checkpoints} holds no checkpoint; check --workdir.'
      )
    finetune.check_config(config, resuming=resuming)

    inputs = data_lib.create_input(config, jax.process_index(), jax.process_count())
    config = record.resolve_config(config, inputs.num_train_examples)
    compilation_cache.enable(config.compilation_cache_dir)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:  # one run at a time in a workdir (the processes of one run share it)
      held.enter_context(files.run_lock(workdir))
    checkpointer = ckpt.Checkpointer(
        checkpoints,
        save_every_steps=config.checkpoint_every_steps,
        keep=config.keep_checkpoints,
        async_save=config.async_checkpoints,
    )
    # A fine-tune resumes as the model its checkpoints were written for, without its weights file.
    newest = checkpointer.newest_meta() if config.pretrained else None
    model, pretrained = finetune.create_model(config, inputs.num_classes, (newest or {}).get('model'))
    tx = optimizer.create_optimizer(config)
    if config.trainable == 'head':
      tx = finetune.freeze(tx, model)
    schedule = optimizer.learning_rate_schedule(config)  # for logging
    ema = config.ema_decay > 0
    init = lambda: steps.create_train_state(model, tx, inputs.image_shape, config.seed, ema=ema)
    abstract_state = jax.eval_shape(init)
    state_sharding = parallel.state_shardings(
        abstract_state,
        mesh,
        shard_params=config.shard_params,
        min_size=config.shard_min_size,
    )

    p_train_steps, p_eval_steps = _compile(config, state_sharding, mesh)

    run_info, allowed = {'config': record.run_record(config)}, record.allowed_changes(config)
    if config.pretrained:
      run_info['model'] = convert.model_config(model)
    restored = checkpointer.restore(
        ckpt.abstract_with_shardings(abstract_state, state_sharding),
        rewind_to=config.resume_from_step,
        check=lambda meta, step: record.check_resume(meta.get('config'), run_info['config'], step, allowed),
    )
    if restored is None:
      state, meta = steps.initial_state(model, tx, inputs.image_shape, config.seed, state_sharding, pretrained, ema), {}
      logging.info('Starting from %s in %s.', f'weights {config.pretrained}' if pretrained else 'scratch', workdir)
    else:
      state, meta = restored
      logging.info('Resumed from the checkpoint of step %d in %s.', int(state.step), checkpointer.directory)
    pretrained = None  # the state holds what it needs
    step = int(state.step)
    if step >= config.num_train_steps:
      logging.info('This run already finished (step %d of %d); evaluating only.', step, config.num_train_steps)
    # Saved with every checkpoint after a rewind, so that rerunning the same command resumes.
    run_info['resumed_from'] = config.resume_from_step if config.resume_from_step >= 0 else meta.get('resumed_from', -1)
    num_params = sum(x.size for x in jax.tree.leaves(abstract_state.params))
    _log_run(config, num_params, mesh, inputs, step, workdir)
    # A step whose evaluation a signal stopped, and a finished run's last step, are evaluated
    # again: an earlier line of that evaluation moves aside.
    eval_pending = bool(meta.get('eval_pending'))
    writer = writers.create_writer(workdir, step, redo_eval=eval_pending or step >= config.num_train_steps)
    if step == 0:
      writer.write_hparams({k: v for k, v in config.to_dict().items() if not isinstance(v, dict)})

    # The weights evaluated (eval_* in the logs, test_* in final_metrics.json) and, with a moving
    # average, the other ones too (eval_raw_* or eval_ema_*).
    evaluated = 'ema' if ema and config.eval_ema else 'raw'

    def run_eval(state, step: int) -> dict[str, dict[str, float]] | None:
      """The evaluation's metrics (of each weights evaluated), logged; None if a signal stopped it
      (JAX's preemption service agrees on training steps only: with it, an evaluation runs to its end)."""
      hostmem.release_freed_memory()  # the training steps' temporaries make room for the evaluation's
      stop = lambda: not interrupts.preemption_service() and interrupts.any_process(signals.received is not None)
      results, scalars = {}, {}
      for weights in sorted(p_eval_steps, key=lambda w: w != evaluated):
        start = time.perf_counter()
        metrics = evaluate(p_eval_steps[weights], state, inputs, mesh, config.steps_per_loop, stop)
        if metrics is None:
          logging.warning('The evaluation of step %d was stopped; it runs first when the run resumes.', step)
          return None
        logging.info(
            'eval at step %d%s: accuracy %.4f  top-5 %.4f  loss %.4f  (%d examples, %.1fs)',
            step,
            f' ({"moving average" if weights == "ema" else "raw weights"})' if ema else '',
            metrics['accuracy'],
            metrics['top5_accuracy'],
            metrics['loss'],
            inputs.num_eval_examples,
            time.perf_counter() - start,
        )
        prefix = 'eval_' if weights == evaluated else f'eval_{weights}_'
        scalars |= {f'{prefix}{k}': v for k, v in metrics.items()}
        results[weights] = metrics
      writer.write_scalars(step, scalars)
      return results

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
        run_info,
        (p_train_steps, schedule),
        run_eval,
        inputs,
        mesh,
        checkpointer,
        writer,
        signals,
    )
    signals.training()  # a finished run that only evaluates
    results = run_eval(state, step)
    if results is None:
      raise _stopped(signals, checkpointer, step)
    eval_metrics = results.pop(evaluated)
    final = {
        'test_accuracy': eval_metrics['accuracy'],
        'test_top5_accuracy': eval_metrics['top5_accuracy'],
        'test_loss': eval_metrics['loss'],
        'evaluated_weights': 'moving average' if evaluated == 'ema' else 'raw',
        **{f'test_{weights}_{k}': v for weights, other in results.items() for k, v in other.items()},
        'step': step,
        'train_seconds': round(train_seconds, 2),
        'num_params': num_params,
        'model': config.model.name,
        'devices': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
    }
    if jax.process_index() == 0:  # whole or not at all, still under the signal handlers
      with files.atomic(os.path.join(workdir, 'final_metrics.json'), overwrite=True, text=True) as f:
        json.dump(final, f, indent=2)
  finally:
    if writer is not None:
      writer.close()
    if checkpointer is not None:
      checkpointer.close()
    held.close()
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
