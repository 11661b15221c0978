"""A tiny run killed while a checkpoint is being written, stopped by SIGTERM, stopped by SIGTERM
during an evaluation, with its newest checkpoint's metadata overwritten, and refused (a read
error of the environment, a changed seed) ends bit-identical to an uninterrupted one, with
every step logged once and nothing deleted (`scripts.chaos` does more on the default network,
kills at random moments too: docs/reliability.md)."""

import subprocess
import sys

from conftest import ROOT, tiny_flags

from scripts import chaos

TINY = tiny_flags(
    num_train_steps=48,
    warmup_steps=4,
    checkpoint_every_steps=4,
    log_every_steps=4,
    eval_every_steps=8,  # evaluations during training, for the SIGTERM during one
    train_split='train[:1024]',
    eval_split='test[:100]',
    eval_batch_size=100,
)


def test_kills_sigterms_and_damage_leave_the_final_state_bit_identical_and_every_step_logged_once(tmp_path):
  figures = chaos.run_chaos(1, 1, str(tmp_path), TINY, seed=1)
  assert (figures['kills'], figures['kills_during_save'], figures['sigterms']) == (1, 1, 1), figures
  assert figures['damage'] == dict.fromkeys(chaos.DAMAGE_MODES, 1), figures
  # Each SIGTERM saved its step and exited with status 143; the metadata damage was set aside and the
  # run resumed from the step before; each refusal was one line and left every file as it was.
  assert figures['failures'] == [] and figures['refusals_ok'], figures
  assert figures['corrupt_checkpoints'] == 0, figures  # none set aside but the one damaged on purpose
  assert figures['nothing_deleted'] and figures['metrics_every_step_once'], figures
  assert figures['metric_mismatches'] == [], figures
  assert figures['bit_identical'] and figures['arrays'] == 88, figures
  assert figures['final_metrics_equal'], figures


def test_a_workdir_that_holds_files_is_refused_in_one_line_and_left_as_it_was(tmp_path):
  # --workdir is also the training flag: chaos works only in a new or empty folder, never empties one.
  (tmp_path / 'checkpoints').mkdir()
  (tmp_path / 'metrics.jsonl').write_text('keep\n')
  before = chaos.file_digests(str(tmp_path))
  run = subprocess.run(
      [sys.executable, '-m', 'scripts.chaos', f'--workdir={tmp_path}', '--kills=0', '--sigterms=0', '--damage='],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,  # a chaos run that went ahead would train for much longer
  )
  assert run.returncode == 1 and run.stderr.count('\n') == 1 and 'already holds' in run.stderr, run.stderr[-3000:]
  assert chaos.file_digests(str(tmp_path)) == before and (tmp_path / 'checkpoints').is_dir()
