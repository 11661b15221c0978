"""A run never loses what it had: only evidence of damage sets a checkpoint aside, damaged
metadata is damage, logged metrics are moved aside and never deleted, a resume under a
changed config is refused, and a signal stops a run quickly in every phase (issue #22;
docs/reliability.md names these tests)."""

import errno
import json
import os
import pathlib
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from unittest import mock

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, damage, file_size_limit, metrics_lines, params_of
from inception_jax import checkpoint, data, files, interrupts, parallel, train
from scripts import chaos


def copy_of(finished_run, tmp_path) -> pathlib.Path:
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run[0], workdir)
  return workdir


def failing_once(error: BaseException, item: str = 'state'):
  """CheckpointManager.restore raising `error` the first time it is asked for `item`."""
  restore, raised = ocp.CheckpointManager.restore, []

  def flaky(self, step, *args, **kwargs):
    if item in kwargs.get('args', {}).keys() and not raised:
      raised.append(step)
      raise error
    return restore(self, step, *args, **kwargs)

  return mock.patch.object(ocp.CheckpointManager, 'restore', flaky)


@pytest.mark.parametrize(
    'error',
    [
        PermissionError(errno.EACCES, 'Permission denied', 'checkpoints/6/state/manifest.ocdbt'),
        MemoryError(),
        OSError(errno.EIO, 'Input/output error'),
        ValueError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB'),
    ],
    ids=['permission', 'host_memory', 'io_error', 'device_memory'],
)
def test_a_read_error_of_the_environment_moves_nothing_and_the_rerun_resumes(
    tmp_path, make_config, finished_run, error
):
  workdir = copy_of(finished_run, tmp_path)
  before = chaos.file_digests(workdir)
  with failing_once(error), pytest.raises(checkpoint.CheckpointReadError, match='step 6 .*nothing was moved'):
    train.train_and_evaluate(make_config(), str(workdir))
  assert chaos.file_digests(workdir) == before  # no checkpoint moved, no metric line dropped, nothing written
  again, final = train.train_and_evaluate(make_config(), str(workdir))
  assert final['step'] == 6 and not (workdir / 'checkpoints_set_aside').exists()
  jax.tree.map(np.testing.assert_array_equal, params_of(again), finished_run[1])


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
  return crc ^ 0xFFFFFFFF


def test_a_layout_newer_than_the_installed_tensorstore_reads_is_refused_and_moves_nothing(
    tmp_path, make_config, finished_run
):
  """A real incompatibility: step 6's OCDBT manifests claim format version 7 (with a valid
  checksum), as a TensorStore newer than the installed one would write them."""
  workdir = copy_of(finished_run, tmp_path)
  for manifest in (workdir / 'checkpoints' / '6' / 'state').rglob('manifest.ocdbt'):
    data = bytearray(manifest.read_bytes())
    data[12] = 7  # after the magic number and the length: the format version
    data[-4:] = struct.pack('<I', crc32c(bytes(data[:-4])))
    manifest.write_bytes(bytes(data))
  before = chaos.file_digests(workdir)
  with pytest.raises(checkpoint.CheckpointReadError) as error:
    train.train_and_evaluate(make_config(), str(workdir))
  assert str(error.value) == (
      f'The checkpoint of step 6 in {workdir}/checkpoints is in a layout this installation cannot read '
      '(Maximum supported version is 0 but received: 7): it is no evidence of damage, so nothing was moved; '
      'install the orbax-checkpoint and tensorstore that wrote it, or newer, and run the same command again.'
  )
  assert chaos.file_digests(workdir) == before


@pytest.mark.parametrize('how', ['meta_empty_object', 'meta_a_list', 'meta_shapes_digit', 'meta_without_checksums'])
def test_damaged_metadata_is_damage_the_run_falls_back_past_it(tmp_path, make_config, finished_run, how):
  workdir = copy_of(finished_run, tmp_path)
  damage(workdir / 'checkpoints' / '6', how)
  resumed, final = train.train_and_evaluate(make_config(), str(workdir))
  assert [p.name.split('-')[:2] for p in (workdir / 'checkpoints_set_aside').iterdir()] == [['6', 'unreadable']]
  assert final['step'] == 6
  jax.tree.map(np.testing.assert_array_equal, params_of(resumed), finished_run[1])  # step 3's, then 3 more steps


@pytest.mark.parametrize('layout', ['checksummed', 'unchecked'])
def test_checkpoints_of_older_layouts_resume_verified_or_are_refused_and_kept(
    tmp_path, make_config, finished_run, layout
):
  # Issue 30, finding 3: metadata written before it was sealed (2026-11-29 to 12-04: checksums and shapes,
  # no run record) was set aside as damage, and an upgraded project started over at step 0. Before that
  # (from 2026-11-22), checkpoints carried no checksums: they cannot be verified, and are refused, kept.
  workdir = copy_of(finished_run, tmp_path)
  for step in (3, 6):
    path = workdir / 'checkpoints' / str(step) / 'meta' / 'metadata'
    meta = json.loads(path.read_text())
    old = {'train_seconds': meta['train_seconds'], 'data_position': step, 'resumed_from': -1}
    if layout == 'checksummed':
      old.update(checksums=meta['checksums'], shapes=meta['shapes'])
    path.write_text(json.dumps(old))
  if layout == 'unchecked':
    before = chaos.file_digests(workdir)
    with pytest.raises(
        checkpoint.CheckpointMismatchError, match=r'step 6 .* carries no checksums: .*nothing was moved'
    ):
      train.train_and_evaluate(make_config(), str(workdir))
    assert chaos.file_digests(workdir) == before
    return
  _, final = train.train_and_evaluate(make_config(), str(workdir))
  assert final['step'] == 6 and not (workdir / 'checkpoints_set_aside').exists()
  damage(workdir / 'checkpoints' / '6', 'overwritten')  # the old layout's arrays are still verified
  resumed, final = train.train_and_evaluate(make_config(), str(workdir))
  assert [p.name.split('-')[:2] for p in (workdir / 'checkpoints_set_aside').iterdir()] == [['6', 'unreadable']]
  jax.tree.map(np.testing.assert_array_equal, params_of(resumed), finished_run[1])  # step 3's, then 3 more steps


def test_a_checkpoint_that_cannot_fit_is_one_line_before_anything_is_written(tmp_path, caplog):
  checkpointer = checkpoint.Checkpointer(str(tmp_path / 'checkpoints'), save_every_steps=1, keep=2)
  state = {'w': jax.numpy.ones((256, 1024))}  # 1 MiB
  with caplog.at_level('WARNING', logger='absl'), file_size_limit(256 << 10):
    with pytest.raises(checkpoint.CheckpointWriteError) as error:
      checkpointer.save(1, state, {})
  message = str(error.value)
  assert '\n' not in message and message.startswith(f'cannot save step 1 in {tmp_path}/checkpoints: it needs about')
  assert 'files of at most 0.2 MiB (ulimit -f)' in message
  assert os.listdir(tmp_path / 'checkpoints') == [] and not caplog.records
  checkpointer.save(1, state, {})  # room again
  checkpointer.wait()
  assert checkpointer.all_steps() == [1]
  checkpointer.close()


def test_a_save_that_fails_while_writing_is_one_line_naming_the_cause_and_keeps_the_older_steps(tmp_path):
  # In a process of its own, which then ends, as a run does after this error: TensorStore's
  # threads of the failed write outlive it, and must not share a process with later tests.
  code = f"""
import os, resource, sys
import jax
from inception_jax import checkpoint, files

checkpointer = checkpoint.Checkpointer({str(tmp_path / 'checkpoints')!r}, save_every_steps=1, keep=2)
checkpointer.save(1, {{'w': jax.numpy.ones((16,))}}, {{}})
checkpointer.wait()
files.room_for = lambda folder, nbytes: None  # the disk fills while it writes
resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
  checkpointer.save(2, {{'w': jax.random.normal(jax.random.PRNGKey(0), (256, 1024))}}, {{}})  # 1 MiB
  checkpointer.wait()
  checkpointer.check_for_errors()
except checkpoint.CheckpointWriteError as e:
  print(e)
print(checkpointer.all_steps())
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""
  run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
  error, steps = run.stdout.splitlines()
  assert re.fullmatch(
      f'cannot save step 2 in {tmp_path}/checkpoints \\({tmp_path}/checkpoints/2.orbax-checkpoint-tmp/\\S+: '
      'File too large\\); the newest saved step is 1: make room and run the same command to resume from it.',
      error,
  ), error
  assert steps == '[1]'
  assert 'ERROR' not in run.stderr and 'Traceback' not in run.stderr, run.stderr  # Orbax's own of the same error


def test_metric_lines_past_the_restored_step_move_to_a_side_file_never_away(tmp_path, make_config, finished_run):
  workdir = copy_of(finished_run, tmp_path)
  logged = (workdir / 'metrics.jsonl').read_text().splitlines()
  with open(workdir / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 6, "train_lo')  # a line cut short by a kill
  damage(workdir / 'checkpoints' / '6', 'truncated')
  train.train_and_evaluate(make_config(), str(workdir))  # resumes from step 3

  (side,) = workdir.glob('metrics.after_3.*.jsonl')
  moved = side.read_text().splitlines()
  assert moved == [line for line in logged if json.loads(line)['step'] > 3] + ['{"step": 6, "train_lo']
  kept = (workdir / 'metrics.jsonl').read_text().splitlines()
  assert [l for l in logged if json.loads(l)['step'] <= 3] == kept[: len(kept) - len(moved) + 1]
  steps = [l['step'] for l in metrics_lines(workdir) if 'train_loss' in l]
  assert steps == [2, 3, 4, 6]  # every step once


def test_a_resume_under_a_changed_config_is_refused_in_one_line_naming_the_fields(tmp_path, make_config, finished_run):
  workdir = copy_of(finished_run, tmp_path)
  shutil.rmtree(workdir / 'checkpoints' / '6')
  before = chaos.file_digests(workdir)
  changed = make_config(global_batch_size=64, seed=1)
  with pytest.raises(train.ConfigChangedError) as refused:
    train.train_and_evaluate(changed, str(workdir))
  message = str(refused.value)
  assert '\n' not in message
  assert 'global_batch_size (checkpoint 32, now 64)' in message and 'seed (checkpoint 0, now 1)' in message
  assert '--config.allow_config_change=global_batch_size,seed' in message
  assert chaos.file_digests(workdir) == before
  # allow_config_change names the fields it lets change: the batch is still refused, and a name that is no
  # field the resume checks is refused before any work.
  with pytest.raises(train.ConfigChangedError, match=r'global_batch_size \(checkpoint 32, now 64\)\. '):
    train.train_and_evaluate(make_config(global_batch_size=64, seed=1, allow_config_change='seed'), str(workdir))
  with pytest.raises(ValueError, match="allow_config_change names 'True', which is not a field"):
    train.train_and_evaluate(make_config(seed=1, allow_config_change='True'), str(workdir))
  assert chaos.file_digests(workdir) == before
  # A knowing change goes on (and operational fields may change anyway).
  _, final = train.train_and_evaluate(make_config(seed=1, allow_config_change='seed', log_every_steps=3), str(workdir))
  assert final['step'] == 6


def test_a_refused_rewind_moves_nothing_and_the_same_command_then_resumes_the_newest(
    tmp_path, make_config, finished_run
):
  # Issue 30, finding 4: the config and shape checks of a rewind ran after the later steps were set aside.
  workdir = copy_of(finished_run, tmp_path)
  before = chaos.file_digests(workdir)
  with pytest.raises(train.ConfigChangedError, match=r'step 3 .*seed \(checkpoint 0, now 1\)'):
    train.train_and_evaluate(make_config(resume_from_step=3, seed=1), str(workdir))
  assert chaos.file_digests(workdir) == before
  other_model = make_config(resume_from_step=3)
  other_model.model.hidden_units = 16
  with pytest.raises(checkpoint.CheckpointMismatchError, match='step 3 .*different model'):
    train.train_and_evaluate(other_model, str(workdir))
  assert chaos.file_digests(workdir) == before and not (workdir / 'checkpoints_set_aside').exists()
  resumed, final = train.train_and_evaluate(make_config(), str(workdir))
  assert final['step'] == 6
  jax.tree.map(np.testing.assert_array_equal, params_of(resumed), finished_run[1])


def test_resume_from_step_where_there_are_no_checkpoints_or_a_size_of_zero_is_refused_and_creates_nothing(
    tmp_path, make_config
):
  # Issue 30, finding 7: an empty or misspelt workdir trained from scratch without a word.
  (tmp_path / 'empty' / 'checkpoints').mkdir(parents=True)
  for name in ('misspelt', 'empty'):
    with pytest.raises(checkpoint.CheckpointError, match=r'resume_from_step=3, but .* holds no checkpoint'):
      train.train_and_evaluate(make_config(resume_from_step=3), str(tmp_path / name))
  # Issue 30, finding 12: eval_batch_size=0 failed only after the whole training run.
  with pytest.raises(ValueError, match=r'^eval_batch_size must be positive, got 0\.$'):
    train.train_and_evaluate(make_config(eval_batch_size=0), str(tmp_path / 'new'))
  assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob('*')) == ['empty', 'empty/checkpoints']


def test_a_longer_or_shorter_schedule_resumes_and_says_so(tmp_path, make_config, finished_run, caplog):
  # Issue 30, finding 5: the run's length is no config change; the schedule follows the new length.
  workdir = copy_of(finished_run, tmp_path)
  with caplog.at_level('INFO', logger='absl'):
    _, final = train.train_and_evaluate(make_config(num_train_steps=8), str(workdir))
  assert final['step'] == 8
  assert 'num_train_steps (checkpoint 6, now 8); the learning-rate schedule follows the new length' in caplog.text
  assert [l['step'] for l in metrics_lines(workdir) if 'train_loss' in l] == [2, 3, 4, 6, 8]  # 3: a save flushes
  _, final = train.train_and_evaluate(make_config(num_train_steps=4), str(workdir))  # past its end: evaluates only
  assert final['step'] == 8


def test_a_second_run_in_a_workdir_in_use_is_refused_and_touches_nothing(tmp_path, make_config, finished_run):
  # Issue 30, finding 6: a second run's rewrite of metrics.jsonl left the first writing into an unlinked file.
  workdir = copy_of(finished_run, tmp_path)
  with files.run_lock(str(workdir)):  # the first run
    before = chaos.file_digests(workdir)
    with pytest.raises(ValueError, match=rf'{workdir} is in use by another run \(process {os.getpid()} on '):
      train.train_and_evaluate(make_config(num_train_steps=9), str(workdir))
    assert chaos.file_digests(workdir) == before


def test_a_refused_resume_is_one_line_on_stderr(tmp_path, finished_run):
  from conftest import tiny_flags

  workdir = copy_of(finished_run, tmp_path)
  run = subprocess.run(
      [sys.executable, '-m', 'experiments.mnist_inception', f'--workdir={workdir}', *tiny_flags(seed=1)],
      capture_output=True,
      text=True,
      cwd=ROOT,
  )
  assert run.returncode == 1 and run.stderr.startswith(
      'error: The checkpoint of step 6 was written under another'
  ), run.stderr
  assert run.stderr.count('\n') == 1, run.stderr


def as_a_user() -> list[str]:
  """A command prefix under which file permissions hold: the tests run as root, and util-linux's
  setpriv drops the capabilities that let root read and write anything."""
  if os.geteuid() != 0:
    return []
  caps = '-dac_override,-dac_read_search'
  return ['setpriv', f'--bounding-set={caps}', f'--inh-caps={caps}']


def test_an_unreadable_checkpoint_file_is_one_line_naming_the_file_and_the_cause(tmp_path, finished_run):
  from conftest import tiny_flags

  workdir = copy_of(finished_run, tmp_path)
  data = max((workdir / 'checkpoints' / '6' / 'state').rglob('ocdbt.process_0/d/*'), key=lambda p: p.stat().st_size)
  data.chmod(0)
  before = chaos.file_digests(workdir)
  run = subprocess.run(
      [*as_a_user(), sys.executable, '-m', 'experiments.mnist_inception', f'--workdir={workdir}', *tiny_flags()],
      capture_output=True,
      text=True,
      cwd=ROOT,
  )
  assert run.returncode == 1 and run.stderr.count('\n') == 1, run.stderr
  assert run.stderr.startswith(
      f'error: The checkpoint of step 6 in {workdir}/checkpoints could not be read ({data}: Permission denied); '
      'that is no evidence of damage, so nothing was moved'
  ), run.stderr
  assert chaos.file_digests(workdir) == before


def test_a_signal_during_an_evaluation_stops_it_within_a_call_and_the_resume_evaluates_first(
    tmp_path, make_config, finished_run
):
  # Training calls are one step each; the 4th call of shard_batch is the first batch of step 3's evaluation.
  config = make_config(steps_per_loop=1, eval_every_steps=3, eval_batch_size=50)  # 10 evaluation batches
  shard_batch, calls = parallel.shard_batch, []

  def signal_in_evaluation(batch, mesh, **kwargs):
    calls.append(1)
    if len(calls) == 4:
      os.kill(os.getpid(), signal.SIGTERM)
    return shard_batch(batch, mesh, **kwargs)

  with mock.patch.object(parallel, 'shard_batch', signal_in_evaluation):
    with pytest.raises(interrupts.StopRequested, match='after saving step 3'):
      train.train_and_evaluate(config, str(tmp_path))
  assert len(calls) <= 5  # the evaluation stopped within one more call
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3']
  assert not any('eval_accuracy' in l for l in metrics_lines(tmp_path))

  resumed, final = train.train_and_evaluate(config, str(tmp_path))
  evaluated = [l['step'] for l in metrics_lines(tmp_path) if 'eval_accuracy' in l]
  assert evaluated == [3, 6]  # step 3's evaluation ran first on resume, once
  assert final['step'] == 6
  jax.tree.map(np.testing.assert_array_equal, params_of(resumed), finished_run[1])


def test_a_signal_before_training_starts_stops_at_once_with_nothing_to_save(tmp_path, make_config):
  # During the data's preparation, then during the first compile: no step runs after either.
  create_input = data.create_input

  def signal_while_preparing(*args):
    os.kill(os.getpid(), signal.SIGINT)
    return create_input(*args)

  with mock.patch.object(data, 'create_input', signal_while_preparing):
    with pytest.raises(interrupts.StopRequested, match='SIGINT before training started') as stop:
      train.train_and_evaluate(make_config(), str(tmp_path / 'a'))
  assert stop.value.exit_code == 130
  assert not os.path.exists(tmp_path / 'a' / 'checkpoints')

  shard_batch = parallel.shard_batch

  def signal_before_the_first_step(batch, mesh, **kwargs):  # the first compile follows
    os.kill(os.getpid(), signal.SIGTERM)
    return shard_batch(batch, mesh, **kwargs)

  with mock.patch.object(parallel, 'shard_batch', signal_before_the_first_step):
    with pytest.raises(interrupts.StopRequested, match='SIGTERM before training started'):
      train.train_and_evaluate(make_config(), str(tmp_path / 'b'))
  assert os.listdir(tmp_path / 'b' / 'checkpoints') == [] and metrics_lines(tmp_path / 'b') == []


def run_script(code: str, *signals_after_ready: int, timeout: float = 120) -> tuple[int, str, float]:
  """Runs `code` in a fresh Python (signals at their default actions, as from a shell: pytest-xdist
  workers ignore SIGTERM, and children inherit that); once it prints 'ready', sends each signal
  0.2 s apart. Returns (status, output, seconds from 'ready' to the end)."""

  code = 'import signal; signal.signal(signal.SIGTERM, signal.SIG_DFL)\n' + textwrap.dedent(code)

  process = subprocess.Popen(
      [sys.executable, '-c', code],
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )
  lines = []
  for line in process.stdout:
    lines.append(line)
    if line.strip() == 'ready':
      break
  ready = time.monotonic()
  for signum in signals_after_ready:
    time.sleep(0.2)
    process.send_signal(signum)
  out, _ = process.communicate(timeout=timeout)
  return process.returncode, ''.join(lines) + out, time.monotonic() - ready


def test_a_second_signal_stops_at_once_even_inside_a_long_call():
  # A call that does not return to Python until it ends (here numpy's SVD; TFDS's preparation,
  # a large device_get): Python runs its handler once, afterwards, however many signals came.
  code = """
      import time
      import numpy as np
      from inception_jax import interrupts

      matrix = np.random.default_rng(0).standard_normal((2500, 2500))
      with interrupts.StopSignals() as signals:
        signals.training()
        print('ready', flush=True)
        start = time.monotonic()
        np.linalg.svd(matrix)  # about 7 s on 2 cores
        print(f'returned after {time.monotonic() - start:.1f} s', flush=True)
  """
  status, out, seconds = run_script(code, signal.SIGTERM, signal.SIGTERM)
  assert 'Second SIGTERM: stopping now, without saving' in out and 'returned after' not in out, out
  assert status == 128 + signal.SIGTERM and seconds < 2, (status, seconds)


def test_sigint_with_several_processes_and_no_preemption_service_is_taken_not_fatal():
  # jax.distributed without its preemption service: nothing catches a SIGTERM sent to oneself.
  code = """
      import time
      from unittest import mock
      import jax
      from inception_jax import interrupts
      jax.config.update('jax_enable_preemption_service', False)
      with mock.patch.object(interrupts.jax, 'process_count', lambda: 2):
        with interrupts.StopSignals() as signals:
          signals.training()
          print('ready', flush=True)
          time.sleep(2)
          print('received', signals.received, flush=True)
  """
  status, out, _ = run_script(code, signal.SIGINT)
  assert status == 0 and f'received {int(signal.SIGINT)}' in out, (status, out)


def test_ctrl_c_while_the_command_prepares_the_dataset_is_one_line(tmp_path):
  # A first run prepares MNIST with TFDS into an empty data_dir: from TFDS_MANUAL_DIR's files, or
  # by downloading them (offline, TFDS retries for minutes).
  from conftest import tiny_flags

  process = subprocess.Popen(
      [
          sys.executable,
          '-m',
          'experiments.mnist_inception',
          f'--workdir={tmp_path / "run"}',
          f'--config.data_dir={tmp_path / "tfds"}',
          *tiny_flags(),
      ],
      cwd=ROOT,
      stderr=subprocess.PIPE,
      text=True,
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a shell starts it
  )
  seen = ''
  while 'Generating splits' not in seen and 'Dl Completed' not in seen:  # TFDS's progress bars: it has begun
    char = process.stderr.read(1)
    assert char, seen[-3000:]
    seen += char
  process.send_signal(signal.SIGINT)
  rest = process.communicate(timeout=120)[1]
  assert process.returncode == 130, (seen + rest)[-3000:]
  assert 'Traceback' not in rest and 'KeyboardInterrupt' not in rest, rest[-3000:]
  assert 'Stopped by SIGINT before training started' in rest, rest[-3000:]
  assert not (tmp_path / 'run' / 'checkpoints').exists() or not os.listdir(tmp_path / 'run' / 'checkpoints')


def test_evaluations_are_logged_once_however_often_a_run_is_restarted(tmp_path, make_config, finished_run):
  # A finished run started again evaluates again: its final evaluation is logged once.
  workdir = copy_of(finished_run, tmp_path)
  train.train_and_evaluate(make_config(), str(workdir))
  assert [l['step'] for l in metrics_lines(workdir) if 'eval_accuracy' in l] == [6]

  # Stopped during step 3's evaluation, then killed after evaluating it on resume (before the
  # next checkpoint), then resumed again: step 3's evaluation is logged once.
  config = make_config(steps_per_loop=1, eval_every_steps=3)
  evaluate = train.evaluate

  def signal_then_evaluate(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return evaluate(*args, **kwargs)

  with mock.patch.object(train.loop, 'evaluate', signal_then_evaluate), pytest.raises(interrupts.StopRequested):
    train.train_and_evaluate(config, str(tmp_path / 'b'))
  with (
      mock.patch.object(checkpoint.Checkpointer, 'save', side_effect=RuntimeError('killed')),
      pytest.raises(RuntimeError),
  ):
    train.train_and_evaluate(config, str(tmp_path / 'b'))
  train.train_and_evaluate(config, str(tmp_path / 'b'))
  assert [l['step'] for l in metrics_lines(tmp_path / 'b') if 'eval_accuracy' in l] == [3, 6]
