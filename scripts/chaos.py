"""Interrupts and damages a training run again and again and checks that it ends where an uninterrupted one does.

    python -m scripts.chaos --kills=20 --sigterms=3 --workdir=/tmp/chaos -- --config.num_train_steps=40 \
        --config.checkpoint_every_steps=10 --config.eval_every_steps=20

Everything after `--` goes to `python -m experiments.mnist_inception` (any config override).
It runs the experiment once uninterrupted, then relaunches the same command in a second
workdir until it finishes, in an order shuffled with `--seed`:
- `--kills` times SIGKILL (the first and every other one as soon as a checkpoint is being
  written, the rest at a random moment after the restore);
- `--sigterms` times SIGTERM at a random moment after the first call's steps, which must
  save and exit with status 143;
- once each damage mode of `--damage`:
  - metadata: the newest checkpoint's meta/metadata is overwritten with `{}`; the next launch
    must set that step aside and resume from the one before;
  - read_error: a launch whose first read of a checkpoint's arrays fails with an I/O error
    (EIO) must exit with status 1, one `error: ...` line saying nothing was moved, and leave
    every file of the workdir as it was;
  - config_change: a launch with another --config.seed must be refused the same way, in one
    line naming the field;
  - sigterm_in_eval: a launch that sends itself SIGTERM as its first evaluation starts must
    stop that evaluation, save its step and exit with status 143; the resumed run evaluates
    it first. This needs evaluations during training: pass --config.eval_every_steps.
  - second_run: a launch holds after its first training call while a second one starts on the
    same workdir; the second must be refused in one line naming the first's process, and the
    first, stopped by SIGTERM then, must save and exit with status 143 (every step it logged
    is checked at the end).
  The refusals need a checkpoint: they wait for one (or run on the finished run).
After every launch, no line of metrics.jsonl and its side files (metrics.after_*.jsonl) may
be gone. At the end it compares every array of the two final checkpoints bit for bit, and
the two metrics.jsonl line by line (images_per_sec aside), and prints one JSON line: kills,
kills_during_save, sigterms, launches, damage (how often each mode was done), refusals_ok,
failures (what any launch did wrong, with its log), nothing_deleted, metrics_every_step_once
(the same (step, keys) lines as the uninterrupted run, none twice), metric_mismatches,
corrupt_checkpoints (steps set aside that were not damaged on purpose), mismatches (arrays
that differ), bit_identical, final_metrics_equal.

`run_with_fault` is what the read_error, sigterm_in_eval and second_run launches run.
"""

from __future__ import annotations

import collections
import errno
import glob
import hashlib
import json
import os
import pathlib
import random
import re
import runpy
import signal
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

DAMAGE_MODES = ('metadata', 'read_error', 'config_change', 'sigterm_in_eval', 'second_run')
REFUSALS = ('read_error', 'config_change')  # launches that must change nothing


def run_with_fault(fault: str, module: str) -> None:
  """Runs `module` as `python -m module sys.argv[1:]` would, with `fault` arranged in this process."""
  signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as from a shell (pytest-xdist workers ignore it; children inherit)
  if fault == 'read_error':  # the first read of a checkpoint's arrays fails
    import orbax.checkpoint as ocp

    restore = ocp.CheckpointManager.restore

    def failing(self, step, *args, **kwargs):
      if 'state' not in kwargs.get('args', {}).keys():
        return restore(self, step, *args, **kwargs)
      ocp.CheckpointManager.restore = restore
      raise OSError(errno.EIO, 'Input/output error (injected by scripts.chaos)')

    ocp.CheckpointManager.restore = failing
  elif fault == 'sigterm_in_eval':  # SIGTERM as the first evaluation starts
    from inception_jax.train import loop

    evaluate = loop.evaluate

    def interrupted(*args, **kwargs):
      loop.evaluate = evaluate
      os.kill(os.getpid(), signal.SIGTERM)
      return evaluate(*args, **kwargs)

    loop.evaluate = interrupted
  elif fault == 'hold':  # after its first training call the run holds, until a signal stops it
    from inception_jax.train import loop

    stop_requested = loop._stop_requested  # pylint: disable=protected-access

    def holding(signals, *args):
      loop._stop_requested = stop_requested  # pylint: disable=protected-access
      print('chaos: holding', flush=True)
      while signals.received is None:
        time.sleep(0.01)
      return stop_requested(signals, *args)

    loop._stop_requested = holding  # pylint: disable=protected-access
  else:
    raise ValueError(f'Unknown fault {fault!r}.')
  runpy.run_module(module, run_name='__main__', alter_sys=True)  # sys.argv[0] becomes its file


def launch(module: str, workdir: str, overrides: list[str], log: str, fault: str | None = None) -> subprocess.Popen:
  # Launches share compiled programs through JAX's persistent cache (same program, same results).
  env = dict(os.environ)
  env.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(os.path.dirname(log), 'jax_cache'))
  env.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  command = ['-m', module]
  if fault:  # host memory settings first, as the experiments' mains do
    code = 'from inception_jax import hostmem; hostmem.keep_freed_memory(); from scripts import chaos; '
    command = ['-c', code + f'chaos.run_with_fault({fault!r}, {module!r})']
  with open(log, 'w') as f:
    return subprocess.Popen([sys.executable, *command, f'--workdir={workdir}', *overrides], stdout=f, stderr=f, env=env)


def wait_for(predicate, process: subprocess.Popen, timeout: float) -> bool:
  """Polls until `predicate()` holds (True) or the process has ended (False)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return True
    if process.poll() is not None:
      return False
    time.sleep(0.002)
  raise TimeoutError(f'pid {process.pid} ran past {timeout} s')


def steps(workdir: str) -> list[int]:
  """The steps of the checkpoints in `workdir`."""
  directory = os.path.join(workdir, 'checkpoints')
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit()) if os.path.isdir(directory) else []


def set_aside(workdir: str) -> set[str]:
  """The folders of the checkpoints set aside as damaged ('<step>-unreadable-<time>')."""
  return set(glob.glob('*-unreadable-*', root_dir=os.path.join(workdir, 'checkpoints_set_aside')))


def logged_lines(workdir: str) -> collections.Counter:
  """Every line of metrics.jsonl and its side files (metrics.after_*.jsonl), counted."""
  files = glob.glob(os.path.join(workdir, 'metrics*.jsonl'))
  return collections.Counter(line for path in files for line in pathlib.Path(path).read_text().splitlines())


def file_digests(workdir: str) -> dict[str, str]:
  """{path: sha256} of the files in `workdir` but in temporary folders of interrupted saves (a launch removes
  those) and the run lock's note of its holder (every launch takes the lock; files.run_lock)."""
  digests = {}
  for path in sorted(pathlib.Path(workdir).rglob('*')):
    if path.is_file() and '.orbax-checkpoint-tmp' not in str(path) and path.name != '.lock':
      with open(path, 'rb') as f:
        digests[str(path.relative_to(workdir))] = hashlib.file_digest(f, 'sha256').hexdigest()
  return digests


def metrics(workdir: str) -> list[dict] | None:
  """The lines of metrics.jsonl, parsed; None if one does not parse."""
  try:
    return [json.loads(line) for line in pathlib.Path(workdir, 'metrics.jsonl').read_text().splitlines()]
  except ValueError:
    return None


def final_state(workdir: str) -> dict[str, np.ndarray]:
  """{path: array} of the newest checkpoint's state, read with Orbax (no pickle)."""
  import jax
  import orbax.checkpoint as ocp

  path = os.path.join(workdir, 'checkpoints', str(steps(workdir)[-1]), 'state')
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.restore(path)
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _final_metrics(workdir: str) -> dict:
  return json.loads(pathlib.Path(workdir, 'final_metrics.json').read_text())


def _damage_metadata(workdir: str) -> tuple[int, int]:
  """Overwrites the newest checkpoint's meta/metadata with `{}`; returns (that step, the step before)."""
  *before, newest = steps(workdir)
  pathlib.Path(workdir, 'checkpoints', str(newest), 'meta', 'metadata').write_text('{}')
  return newest, before[-1]


def _not_one_error_line(code: int, log: str, expected: str) -> str | None:
  """What is wrong with a refused launch's exit `code` and `log`, or None: status 1 and one
  `error: ` line, the last, holding `expected`."""
  output = pathlib.Path(log).read_text().splitlines()
  errors = [line for line in output if line.startswith('error: ')]
  if code != 1 or len(errors) != 1 or expected not in errors[0] or errors[0] != output[-1]:
    return f'status {code} and the error lines {errors[:2]}; expected 1 and one last line with {expected!r}'
  return None


def _refuse(action: str, module: str, workdir: str, overrides: list[str], log: str, timeout: float) -> str | None:
  """Launches a run that must be refused (read_error, config_change); what it did wrong, or None."""
  files = file_digests(workdir)
  if action == 'read_error':
    extra, expected = [], 'that is no evidence of damage, so nothing was moved'
  else:
    meta = pathlib.Path(workdir, 'checkpoints', str(steps(workdir)[-1]), 'meta', 'metadata')
    seed = json.loads(meta.read_text())['config']['seed']
    extra, expected = [f'--config.seed={seed + 1}'], f'another config: seed (checkpoint {seed}, now {seed + 1})'
  fault = 'read_error' if action == 'read_error' else None
  code = launch(module, workdir, overrides + extra, log, fault).wait(timeout)
  if wrong := _not_one_error_line(code, log, expected):
    return wrong
  if file_digests(workdir) != files:
    return 'the workdir changed'
  return None


def _stop_in_eval(module: str, workdir: str, overrides: list[str], log: str, timeout: float) -> str | None:
  """Launches a run that sends itself SIGTERM as its first evaluation starts; what it did wrong, or None."""
  code = launch(module, workdir, overrides, log, 'sigterm_in_eval').wait(timeout)
  output = pathlib.Path(log).read_text()
  evaluation = re.search(r'The evaluation of step (\d+) was stopped; it runs first when the run resumes', output)
  stopped = re.search(r'Stopped by SIGTERM after saving step (\d+)', output)
  if code != 143 or not evaluation or not stopped or evaluation[1] != stopped[1]:
    return f'status {code}; expected 143, "The evaluation of step N was stopped" and "after saving step N"'
  return None


def _second_run(module: str, workdir: str, overrides: list[str], log: str, timeout: float):
  """Launches a run that holds after its first training call and, beside it, a second one on the same
  workdir, which must be refused in one line naming the first's process; then stops the first with
  SIGTERM. Returns ('finished', None) if the first finished in its first call, else ('stopped', what
  went wrong or None)."""
  first = launch(module, workdir, overrides, log, 'hold')
  if not wait_for(lambda: 'chaos: holding' in pathlib.Path(log).read_text(), first, timeout):
    if first.wait(timeout) != 0:
      raise RuntimeError(f'A launch failed; see {log}')
    return 'finished', None
  second_log = log.removesuffix('.log') + '-second.log'
  code = launch(module, workdir, overrides, second_log).wait(timeout)
  wrong = _not_one_error_line(code, second_log, f'is in use by another run (process {first.pid} on ')
  wrong = wrong and f'second run: {wrong}'
  first.send_signal(signal.SIGTERM)
  code, output = first.wait(timeout), pathlib.Path(log).read_text()
  if 'Done: test accuracy' not in output and (code != 143 or 'Stopped by SIGTERM after saving step' not in output):
    wrong = wrong or f'first run: status {code}; expected 143 and "Stopped by SIGTERM after saving step"'
  return 'stopped', wrong


def _interrupt(action: str, process: subprocess.Popen, log: str, saving, pause: float, timeout: float):
  """Kills (action 'kill', 'kill_during_save') a launch once it has restored, stops it ('sigterm') once
  it has trained, or lets it finish ('none'). Returns ('finished', None) if it finished first,
  ('killed', None), or ('stopped', what the SIGTERM's launch did wrong or None)."""
  started = lambda: any(s in pathlib.Path(log).read_text() for s in ('Starting from scratch', 'Resumed from'))
  training = lambda: re.search(r'\bstep \d+/\d+ ', pathlib.Path(log).read_text())  # a SIGTERM before would save nothing
  alive = wait_for(training if action == 'sigterm' else started, process, timeout) and action != 'none'
  if alive and action == 'kill_during_save':
    alive = wait_for(saving, process, timeout)
  elif alive:
    time.sleep(pause)
    alive = process.poll() is None
  if not alive:
    if process.wait(timeout) != 0:
      raise RuntimeError(f'A launch failed; see {log}')
    return 'finished', None
  process.send_signal(signal.SIGTERM if action == 'sigterm' else signal.SIGKILL)
  code, output = process.wait(timeout), pathlib.Path(log).read_text()
  if 'Done: test accuracy' in output:  # the signal came as the process was ending
    return 'finished', None
  if action != 'sigterm':
    return 'killed', None
  if code != 143 or 'Stopped by SIGTERM after saving step' not in output:
    return 'stopped', f'status {code}; expected 143 and "Stopped by SIGTERM after saving step"'
  return 'stopped', None


def run_chaos(
    kills: int,
    sigterms: int,
    workdir: str,
    overrides: list[str],
    *,
    damage: tuple[str, ...] = DAMAGE_MODES,
    seed: int = 0,
    module: str = 'experiments.mnist_inception',
    timeout: float = 3600,
) -> dict:
  """Runs the experiment uninterrupted, then under kills and damage; returns the figures printed by main()."""
  if set(damage) - set(DAMAGE_MODES):
    raise ValueError(f'Unknown damage modes {sorted(set(damage) - set(DAMAGE_MODES))}; known: {DAMAGE_MODES}.')
  for name, value in (('kills', kills), ('sigterms', sigterms)):
    if value < 0:
      raise ValueError(f'--{name} must be 0 or more, got {value}.')
  if timeout <= 0:
    raise ValueError(f'--timeout must be positive, got {timeout}.')
  if os.path.isdir(workdir) and os.listdir(workdir) or os.path.lexists(workdir) and not os.path.isdir(workdir):
    raise ValueError(
        f'--workdir={workdir} already holds files; chaos works only in a new or empty folder (it removes '
        'nothing): pass another --workdir.'
    )
  rng = random.Random(seed)
  reference, chaos = os.path.join(workdir, 'reference'), os.path.join(workdir, 'chaos')
  os.makedirs(workdir, exist_ok=True)
  start = time.monotonic()
  process = launch(module, reference, overrides, os.path.join(workdir, 'reference.log'))
  if process.wait(timeout) != 0:
    raise RuntimeError(f'The uninterrupted run failed; see {workdir}/reference.log')

  train_seconds = _final_metrics(reference)['train_seconds']

  plan = ['kill' if i % 2 else 'kill_during_save' for i in range(kills)] + ['sigterm'] * sigterms + list(damage)
  rng.shuffle(plan)
  plan.append('none')  # the launch that finishes
  figures = {'kills': 0, 'kills_during_save': 0, 'sigterms': 0, 'launches': 0, 'damage': dict.fromkeys(damage, 0)}
  failures, refusals_ok, nothing_deleted = [], True, True
  damage_pending, damaged = False, None  # metadata: waits for a launch that trains and two checkpoints
  saving = lambda: bool(glob.glob(os.path.join(chaos, 'checkpoints', '*.orbax-checkpoint-tmp*')))
  while plan:
    action = plan.pop(0)
    if action == 'metadata':
      damage_pending = True
      continue
    if action in REFUSALS and not steps(chaos):  # they need a checkpoint: after the next launch that trains
      plan.insert(next(i for i, a in enumerate(plan) if a not in REFUSALS) + 1, action)
      continue
    # With a step before it: a run whose only checkpoint is damaged stops and says so (test_train.py).
    if damage_pending and action not in REFUSALS and len(steps(chaos)) > 1:
      damage_pending, damaged = False, _damage_metadata(chaos)
    log = os.path.join(workdir, f'chaos-{figures["launches"]}.log')
    lines, aside = logged_lines(chaos), set_aside(chaos)
    figures['launches'] += 1
    if action in REFUSALS:
      wrong = _refuse(action, module, chaos, overrides, log, timeout)
      refusals_ok &= wrong is None
      figures['damage'][action] += 1
    elif action == 'sigterm_in_eval':
      wrong = _stop_in_eval(module, chaos, overrides, log, timeout)
      figures['damage'][action] += 1
    elif action == 'second_run':
      outcome, wrong = _second_run(module, chaos, overrides, log, timeout)
      figures['damage'][action] += outcome == 'stopped'
      if outcome == 'finished':  # it trained too little to be joined: another launch tries again
        plan = [a for a in plan if a in REFUSALS]
    else:
      process = launch(module, chaos, overrides, log)
      outcome, wrong = _interrupt(action, process, log, saving, rng.uniform(0, train_seconds / 8), timeout)
      if outcome == 'finished':
        plan = [a for a in plan if a in REFUSALS]  # they may refuse a finished run too
      figures['kills'] += outcome == 'killed'
      figures['kills_during_save'] += outcome == 'killed' and action == 'kill_during_save'
      figures['sigterms'] += outcome == 'stopped'
    if wrong:
      failures.append(f'{action} ({log}): {wrong}')
    if damaged and action not in REFUSALS:  # this launch restored past the damaged step
      (step, before), damaged = damaged, None
      resumed = f'Resumed from the checkpoint of step {before} '
      moved = [name.split('-')[0] for name in set_aside(chaos) - aside]
      figures['damage']['metadata'] += 1
      if moved != [str(step)] or resumed not in pathlib.Path(log).read_text():
        failures.append(f'metadata ({log}): set aside {moved}; expected [{step}] and "{resumed}"')
    if lines - logged_lines(chaos):
      nothing_deleted = False
      failures.append(f'{action} ({log}): metric lines gone: {list(lines - logged_lines(chaos))[:2]}')

  expected, actual = final_state(reference), final_state(chaos)
  mismatches = sorted(
      k
      for k in expected.keys() | actual.keys()
      if k not in expected or k not in actual or not np.array_equal(expected[k], actual[k])
  )
  logged, chaos_logged = metrics(reference), metrics(chaos)
  keys = lambda line: (line['step'], tuple(sorted(line)))
  found = {keys(line): line for line in chaos_logged or []}
  metric_mismatches = [
      f'step {line["step"]} {k}: {line[k]} != {found.get(keys(line), {}).get(k)}'
      for line in logged
      for k in line
      if k != 'images_per_sec' and line[k] != found.get(keys(line), {}).get(k)  # images_per_sec measures time
  ]
  return figures | {
      'refusals_ok': refusals_ok,
      'failures': failures,
      'nothing_deleted': nothing_deleted,
      'metrics_every_step_once': chaos_logged is not None and [*map(keys, chaos_logged)] == [*map(keys, logged)],
      'metric_mismatches': metric_mismatches[:5],
      'corrupt_checkpoints': len(set_aside(chaos)) - figures['damage'].get('metadata', 0),
      'arrays': len(expected),
      'mismatches': len(mismatches),
      'mismatched_arrays': mismatches[:5],
      'bit_identical': not mismatches,
      'final_metrics_equal': _final_metrics(reference)['test_accuracy'] == _final_metrics(chaos)['test_accuracy'],
      'seconds': round(time.monotonic() - start, 1),
  }


def main(argv):
  try:
    figures = run_chaos(
        flags.FLAGS.kills,
        flags.FLAGS.sigterms,
        flags.FLAGS.workdir,
        argv[1:],
        damage=tuple(flags.FLAGS.damage),
        seed=flags.FLAGS.seed,
        module=flags.FLAGS.experiment,
        timeout=flags.FLAGS.timeout,
    )
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(json.dumps(figures))
  ok = figures['bit_identical'] and figures['nothing_deleted'] and figures['metrics_every_step_once']
  return 0 if ok and not figures['failures'] and not figures['metric_mismatches'] else 1


def define_flags(flag_values=flags.FLAGS) -> None:
  """Defined by the command, not on import: a launch with a fault imports this module beside the
  experiment's own --workdir."""
  define = lambda kind, *args: getattr(flags, f'DEFINE_{kind}')(*args, flag_values=flag_values)
  define('integer', 'kills', 20, 'SIGKILLs, every other one during a checkpoint write.')
  define('integer', 'sigterms', 3, 'SIGTERMs, each of which must save and exit with status 143.')
  define(
      'list',
      'damage',
      list(DAMAGE_MODES),
      f'Damage modes, each done once: any of {",".join(DAMAGE_MODES)}; empty for none.',
  )
  define('string', 'workdir', '/tmp/chaos', 'A new or empty folder: holds reference/ and chaos/.')
  define('integer', 'seed', 0, 'Chooses the order and the moments.')
  define('string', 'experiment', 'experiments.mnist_inception', 'The module to run.')
  define('float', 'timeout', 3600, 'Seconds one launch may take.')


if __name__ == '__main__':
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
