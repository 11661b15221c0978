"""The command line both experiments share: --config, --workdir and the multi-process flags.

Several hosts: start the same command once per process, with the same workdir on a shared
filesystem and --coordinator_address=HOST:PORT (process 0's) --num_processes=N
--process_id=I, or --auto_distributed where JAX detects the cluster (docs/scaling.md).

Every failure ends in one line on stderr, `error: ...`, and exit status 1 (2 for a bad
flag or config file); `--verbosity=1` shows the traceback instead, and the libraries' INFO
lines (Orbax writes about 8 per checkpoint), which are off otherwise. SIGTERM or Ctrl-C
saves the current step and stops with status 128 + the signal's number; the same command
resumes.
"""

import logging as std_logging
import os
import re
import signal
import sys
import threading
import traceback
import types
import warnings

from absl import app, flags, logging
from ml_collections import config_flags

from inception_jax import interrupts, parallel


def define_flags(default_config: str, default_workdir: str, flag_values=flags.FLAGS) -> types.SimpleNamespace:
  """The experiments' flags (their handles by name); --config's file is read here already."""
  return types.SimpleNamespace(
      config=config_flags.DEFINE_config_file(
          'config', default_config, 'Training config file[:variant].', flag_values=flag_values, lock_config=True
      ),
      workdir=flags.DEFINE_string(
          'workdir', default_workdir, 'Checkpoints, logs and final_metrics.json go here.', flag_values=flag_values
      ),
      print_config=flags.DEFINE_bool(
          'print_config', False, 'Print every config field with its value, then exit.', flag_values=flag_values
      ),
      coordinator=flags.DEFINE_string(
          'coordinator_address', '', "Multi-process: process 0's HOST:PORT.", flag_values=flag_values
      ),
      num_processes=flags.DEFINE_integer(
          'num_processes', 0, 'Multi-process: how many processes take part.', flag_values=flag_values
      ),
      process_id=flags.DEFINE_integer(
          'process_id', -1, "Multi-process: this process's index, 0 to num_processes - 1.", flag_values=flag_values
      ),
      auto=flags.DEFINE_bool(
          'auto_distributed',
          False,
          'Multi-process: let JAX detect the cluster (TPU, Slurm, MPI).',
          flag_values=flag_values,
      ),
  )


def run(default_config: str, default_workdir: str) -> None:
  """Defines the flags with these defaults and runs `train.train_and_evaluate`."""
  path, verbosity = _config_path_and_verbosity(sys.argv, default_config)
  if not os.path.isfile(path):  # ml_collections' own message names neither the file nor the reason
    _exit_with(f'error: no config file {path!r}; the configs are in experiments/configs/.', 2)
  try:  # config_flags reads the overrides off sys.argv here already, and without --config the config file
    handles = define_flags(default_config, default_workdir)
  except Exception as e:  # pylint: disable=broad-except
    _reject(e, path, verbosity)
  config, workdir, print_config = handles.config, handles.workdir, handles.print_config

  def parse_flags(argv):
    try:
      argv = flags.FLAGS(argv)
      getattr(config.value, 'lock', None)  # ml_collections raises a config file's OSError at first use
      return argv
    except Exception as e:  # pylint: disable=broad-except
      _reject(e, path, verbosity)

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    if print_config.value:
      print(config.value)
      return
    if flags.FLAGS.verbosity < 1:  # our progress lines; the libraries' INFO lines only with --verbosity=1
      logging.set_verbosity(logging.INFO)
      logging.get_absl_handler().addFilter(_own_info_only)
      # After a failed restore, Orbax's abandoned reads print "Exception ignored in ...: Event loop
      # is closed" tracebacks as the interpreter exits: ignored by definition, and not the error.
      sys.unraisablehook = lambda unraisable: None
    try:
      # Imported here: TensorFlow's import writes 4 lines to stderr, before a config error's one line.
      from inception_jax import train  # pylint: disable=g-import-not-at-top

      parallel.initialize_distributed(
          handles.coordinator.value, handles.num_processes.value, handles.process_id.value, auto=handles.auto.value
      )
      train.train_and_evaluate(config.value, workdir.value)  # from its start, signals are its own
    except interrupts.StopRequested as e:
      logging.warning('%s', e)
      sys.exit(e.exit_code)
    except KeyboardInterrupt:  # Ctrl-C while importing or joining the other processes: nothing to save
      _exit_with('Stopped by SIGINT before training started; nothing to save.', 128 + signal.SIGINT)
    except Exception as e:  # pylint: disable=broad-except
      if flags.FLAGS.verbosity >= 1:
        raise
      # Work abandoned by the failure (Orbax's reads) may warn or log (asyncio's "Task was destroyed
      # but it is pending" with a TensorStore spec) as the interpreter exits: not the error.
      warnings.simplefilter('ignore')
      threading.excepthook = lambda args: None
      std_logging.disable(std_logging.CRITICAL)
      _exit_with(f'error: {_one_line(e)} (--verbosity=1 shows the traceback)', 1)

  app.run(main, flags_parser=parse_flags)


def _own_info_only(record) -> bool:
  return record.levelno >= logging.converter.STANDARD_WARNING or f'{os.sep}inception_jax{os.sep}' in record.pathname


def _config_path_and_verbosity(argv: list[str], default_config: str) -> tuple[str, int]:
  """--config's file (without its :variant) and --verbosity, on their own: flags.FLAGS stops at a bad flag."""
  early = flags.FlagValues()
  flags.DEFINE_string('config', default_config, '', flag_values=early)
  flags.DEFINE_integer('verbosity', 0, '', short_name='v', flag_values=early)
  try:
    early(argv, known_only=True)
  except flags.Error:
    pass  # flags.FLAGS reports it
  return early['config'].value.split(':', 1)[0], early['verbosity'].value


def _reject(e: Exception, path: str, verbosity: int) -> None:
  """Exits with status 2 for a bad flag, config file or --config override, in one line unless --verbosity=1."""
  if verbosity >= 1:
    raise e
  error = _config_file_error(e)
  if error:
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if frame.filename == path]
    text = _one_line(error)
    if isinstance(error, SyntaxError) and error.filename == path:  # str(error) repeats the file and line
      lines, text = [error.lineno], f'SyntaxError: {error.msg}'
    where = f'{path}, line {lines[-1]}' if lines else path
    _exit_with(f'error: config file {where}: {text} (--verbosity=1 shows the traceback)', 2)
  if isinstance(e, flags.Error):
    _exit_with(f'error: {e}. --helpfull lists the flags.', 2)
  _bad_override(e)


def _config_file_error(e: Exception) -> Exception | None:
  """The error the config file raised, if it caused `e`.

  ml_collections re-raises a ValueError or TypeError with the traceback as its message (and absl wraps that),
  raises the others as they are, and an OSError only when the config is first used.
  """
  load = config_flags.config_flags.ConfigFileFlagParser.parse.__code__
  found = None
  while e is not None:  # from `e` to the first error: the last one raised inside `load` is the config file's
    if any(frame.f_code is load for frame, _ in traceback.walk_tb(e.__traceback__)):
      found = e
    e = e.__cause__ or e.__context__
  return found


def _bad_override(e: Exception) -> None:
  text = str(e).replace('\\n', ' ').replace("\\'", "'")
  suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
  if suggestion:
    _exit_with(
        f'error: the config has no field {suggestion[2]!r}; did you mean {suggestion[1]!r}? '
        '--print_config lists every field.',
        2,
    )
  _exit_with(
      f'error: a --config override was not accepted ({type(e).__name__}: {_one_line(text.strip(chr(34) + chr(39)))}); '
      '--print_config lists every field.',
      2,
  )


def _one_line(error) -> str:
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else type(error).__name__
  return (
      text
      if isinstance(error, (str, ValueError, RuntimeError, OSError, FloatingPointError))
      else (f'{type(error).__name__}: {text}')
  )


def _exit_with(message: str, status: int) -> None:
  print(message, file=sys.stderr, flush=True)
  sys.exit(status)
