"""Where a run's scalars go: metrics.jsonl (one JSON object per line) and TensorBoard events."""

from __future__ import annotations

import json
import os
import time

import jax
from clu import metric_writers

from inception_jax import files


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
        with files.atomic(path, overwrite=True, text=True) as f:  # the run's own log, its later lines kept aside
          f.writelines(line for line in lines if not superseded(line))
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
