"""A tiny run killed while a checkpoint is being written and stopped by SIGTERM ends
bit-identical to an uninterrupted one (`scripts.chaos` does more on the default network,
kills at random moments too: README, "Interruptions and failures")."""

from conftest import tiny_flags

from scripts import chaos

TINY = tiny_flags(
    num_train_steps=48,
    warmup_steps=4,
    checkpoint_every_steps=4,
    log_every_steps=4,
    train_split='train[:1024]',
    eval_split='test[:100]',
    eval_batch_size=100,
)


def test_kills_and_sigterms_leave_the_final_state_bit_identical(tmp_path):
  figures = chaos.run_chaos(1, 1, str(tmp_path), TINY, seed=1)
  assert (figures['kills'], figures['kills_during_save'], figures['sigterms']) == (1, 1, 1), figures
  assert figures['sigterm_failures'] == [], figures  # the SIGTERM saved its step and exited with status 143
  assert figures['corrupt_checkpoints'] == 0, figures
  assert figures['bit_identical'] and figures['arrays'] == 88, figures
  assert figures['final_metrics_equal'], figures
