"""Kills a training run again and again and checks that it ends where an uninterrupted one does.

    python -m scripts.chaos --kills=20 --sigterms=3 --workdir=/tmp/chaos -- --config.num_train_steps=40 \
        --config.checkpoint_every_steps=10

Everything after `--` goes to `python -m experiments.mnist_inception` (any config override).
It runs the experiment once uninterrupted, then relaunches the same command in a second
workdir until it finishes, interrupting it `--kills` times with SIGKILL (the first and every
other one as soon as a checkpoint is being written, the rest at a random moment after the
restore) and `--sigterms` times with SIGTERM, which must save and exit with status 143. It
then compares every array of the two final checkpoints bit for bit and prints one JSON line:
kills, kills_during_save, sigterms, launches, corrupt_checkpoints (steps that a relaunch
found unreadable and set aside), mismatches (arrays that differ), bit_identical.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

_KILLS = flags.DEFINE_integer('kills', 20, 'SIGKILLs, every other one during a checkpoint write.')
_SIGTERMS = flags.DEFINE_integer('sigterms', 3, 'SIGTERMs, each of which must save and exit with status 143.')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/chaos', 'Holds reference/ and chaos/ (emptied first).')
_SEED = flags.DEFINE_integer('seed', 0, 'Chooses the moments.')
_EXPERIMENT = flags.DEFINE_string('experiment', 'experiments.mnist_inception', 'The module to run.')
_TIMEOUT = flags.DEFINE_float('timeout', 3600, 'Seconds one launch may take.')


def launch(module: str, workdir: str, overrides: list[str], log: str) -> subprocess.Popen:
  # Launches share compiled programs through JAX's persistent cache (same program, same results).
  env = dict(os.environ)
  env.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(os.path.dirname(log), 'jax_cache'))
  env.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  with open(log, 'w') as f:
    return subprocess.Popen(
        [sys.executable, '-m', module, f'--workdir={workdir}', *overrides], stdout=f, stderr=f, env=env
    )


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


def final_state(workdir: str) -> dict[str, np.ndarray]:
  """{path: array} of the newest checkpoint's state, read with Orbax (no pickle)."""
  import jax
  import orbax.checkpoint as ocp

  steps = sorted(int(name) for name in os.listdir(os.path.join(workdir, 'checkpoints')) if name.isdigit())
  path = os.path.join(workdir, 'checkpoints', str(steps[-1]), 'state')
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.restore(path)
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _final_metrics(workdir: str) -> dict:
  return json.loads(pathlib.Path(workdir, 'final_metrics.json').read_text())


def run_chaos(
    kills: int,
    sigterms: int,
    workdir: str,
    overrides: list[str],
    *,
    seed: int = 0,
    module: str = 'experiments.mnist_inception',
    timeout: float = 3600,
) -> dict:
  """Runs the experiment uninterrupted and under kills; returns the figures printed by main()."""
  rng = random.Random(seed)
  reference, chaos = os.path.join(workdir, 'reference'), os.path.join(workdir, 'chaos')
  os.makedirs(workdir, exist_ok=True)
  start = time.monotonic()
  process = launch(module, reference, overrides, os.path.join(workdir, 'reference.log'))
  if process.wait(timeout) != 0:
    raise RuntimeError(f'The uninterrupted run failed; see {workdir}/reference.log')

  train_seconds = _final_metrics(reference)['train_seconds']

  plan = ['kill' if i % 2 else 'kill_during_save' for i in range(kills)] + ['sigterm'] * sigterms
  rng.shuffle(plan)
  figures = {'kills': 0, 'kills_during_save': 0, 'sigterms': 0, 'sigterm_failures': [], 'launches': 0}
  started = lambda log: lambda: any(
      s in pathlib.Path(log).read_text() for s in ('Starting from scratch', 'Resumed from')
  )
  saving = lambda: bool(glob.glob(os.path.join(chaos, 'checkpoints', '*.orbax-checkpoint-tmp*')))
  for action in plan + ['none']:
    log = os.path.join(workdir, f'chaos-{figures["launches"]}.log')
    process = launch(module, chaos, overrides, log)
    figures['launches'] += 1
    alive = wait_for(started(log), process, timeout) and action != 'none'
    if alive and action == 'kill_during_save':
      alive = wait_for(saving, process, timeout)
    elif alive:
      time.sleep(rng.uniform(0, train_seconds / 8))
      alive = process.poll() is None
    if not alive:  # it finished (or failed) first
      if process.wait(timeout) != 0:
        raise RuntimeError(f'Launch {figures["launches"]} failed; see {log}')
      break
    if action == 'sigterm':
      process.send_signal(signal.SIGTERM)
      code = process.wait(timeout)
      figures['sigterms'] += 1
      if code != 143 or 'Stopped by SIGTERM after saving step' not in pathlib.Path(log).read_text():
        figures['sigterm_failures'].append(log)
    else:
      process.send_signal(signal.SIGKILL)
      process.wait()
      figures['kills'] += 1
      figures['kills_during_save'] += action == 'kill_during_save'

  set_aside = glob.glob(os.path.join(workdir, 'chaos', 'checkpoints_set_aside', '*-unreadable-*'))
  expected, actual = final_state(reference), final_state(chaos)
  mismatches = sorted(
      k
      for k in expected.keys() | actual.keys()
      if k not in expected or k not in actual or not np.array_equal(expected[k], actual[k])
  )
  return figures | {
      'corrupt_checkpoints': len(set_aside),
      'arrays': len(expected),
      'mismatches': len(mismatches),
      'mismatched_arrays': mismatches[:5],
      'bit_identical': not mismatches,
      'final_metrics_equal': _final_metrics(reference)['test_accuracy'] == _final_metrics(chaos)['test_accuracy'],
      'seconds': round(time.monotonic() - start, 1),
  }


def main(argv):
  import shutil

  shutil.rmtree(_WORKDIR.value, ignore_errors=True)
  figures = run_chaos(
      _KILLS.value,
      _SIGTERMS.value,
      _WORKDIR.value,
      argv[1:],
      seed=_SEED.value,
      module=_EXPERIMENT.value,
      timeout=_TIMEOUT.value,
  )
  print(json.dumps(figures))
  return 0 if figures['bit_identical'] and not figures['sigterm_failures'] else 1


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)))
