"""Short errors for the command-line entry points (no TensorFlow, no JAX).

A user's mistake (an unknown or mistyped config key, a wrong value, a missing file, a config
that fails validate_config, a run without checkpoints) is printed as at most MAX_LINES lines
on stderr and the program exits with EXIT_USER_ERROR; the last line names the key or path and
what to do. A run that stopped on its way and saved its state (RunStopped: damaged data past
the limit, divergence, a signal or preemption, another host's stop) exits with EXIT_STOPPED,
a full disk with EXIT_DISK_FULL, each with as short a message. Everything else (a bug) keeps
its full traceback, and VCLR_DEBUG=1 shows the traceback of every error. docs/reliability.md
has the table of exit statuses.

  absl entry points:     cli_errors.run(main)      (instead of app.run(main))
  argparse entry points: cli_errors.guard(main, sys.argv[1:])
"""

from __future__ import annotations

import errno
import os
import re
import sys
from typing import Callable, Sequence

DEBUG_ENV = 'VCLR_DEBUG'
EXIT_USER_ERROR = 2  # a mistake found before anything ran: nothing written
EXIT_STOPPED = 3  # a run stopped on its way; its state is saved, a rerun resumes
EXIT_DISK_FULL = 4  # every finished checkpoint is intact; free space, rerun to resume
MAX_LINES = 5
DEBUG_HINT = f'(rerun with {DEBUG_ENV}=1 for the traceback)'


class UserError(Exception):
  """A mistake the user can fix: the message's last line names the key or path and the fix."""

  def lines(self) -> list[str]:
    return str(self).splitlines()


class RunStopped(UserError, RuntimeError):
  """A run that stopped on its way with its state saved; the last line says how to go on."""


def before_last_line(text: str, line: str) -> str:
  """``text`` with ``line`` inserted before its last line (which says what to do)."""
  lines = str(text).splitlines() or ['']
  return '\n'.join(lines[:-1] + [line, lines[-1]])


class ConfigError(UserError, ValueError):
  """Every problem validate_config found in a config, one line each."""

  def __init__(self, problems: Sequence[str]):
    self.problems = list(problems)
    super().__init__('\n'.join(self.problems))

  def lines(self) -> list[str]:
    return [f'{len(self.problems)} problem(s) in the config, fix them and rerun:'] + self.problems


class NoCheckpointError(UserError, FileNotFoundError):
  """A run or directory that holds no checkpoint (export, init_from, evaluation)."""


class DiskFullError(UserError, OSError):
  """The disk filled up while training; the message says what is kept and how to resume."""


# Exceptions from the standard library that mean a path the user gave is wrong.
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               FileExistsError)


def is_disk_full(error: BaseException | None) -> bool:
  """True if ``error`` or any exception it was raised from is ENOSPC (also when a library,
  e.g. tensorstore, wrapped it into another type keeping only the text)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if os.strerror(errno.ENOSPC) in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _innermost_text(error: BaseException) -> str:
  """The message without repr escapes: config_dict wraps a KeyError('...\\nDid you mean')
  in an AttributeError whose str() is the escaped repr."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  if error.args and isinstance(error.args[0], str):
    return error.args[0]
  return str(error)


def _argument(argv: Sequence[str], name: str) -> str | None:
  """The value given last to --name in argv (as --name=value or --name value), or None."""
  value = None
  for index, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      value = arg.split('=', 1)[1]
    elif arg == f'--{name}' and index + 1 < len(argv):
      value = argv[index + 1]
  return value


def _config_flag_names() -> list[str]:
  from absl import flags
  from ml_collections.config_flags import config_flags
  return [name for name in flags.FLAGS if config_flags.is_config_flag(flags.FLAGS[name])]


def describe_flag_error(error: BaseException, argv: Sequence[str]) -> list[str]:
  """Short lines for an error raised while parsing the command line."""
  text = _innermost_text(error)
  unknown = re.match(r"'?([\w-]+)'?\s*\n?\s*(Did you mean.*)?$", text.strip(), re.S)
  for name in _config_flag_names():
    config_file = _argument(argv, name)
    if 'Failed loading config file' in text or 'Configuration is not available' in text:
      return [f'--{name}={config_file}: no such config file (or it failed to import).',
              f'--{name}={config_file}: pass an existing file, e.g. --{name}=configs/k400.py.']
    if isinstance(error, (AttributeError, KeyError)) and unknown:
      key = unknown.group(1)
      given = next((a.split('=', 1)[0] for a in argv
                    if a.startswith(f'--{name}.') and re.search(rf'\.{re.escape(key)}(\.|=|$)', a)),
                   f'--{name}...{key}')
      hint = unknown.group(2) or f'"{key}" is not a key of the config file.'
      return [f'{given}: unknown config key. {" ".join(hint.split())}',
              f'{given}: fix the key (the --{name} file lists every key).']
  first = ' '.join(text.split())
  flag = re.match(r'flag (--[\w.-]+)=', first)
  if flag:
    return [first, f'{flag.group(1)}: give it a valid value and rerun.']
  return [first, 'Fix this command-line flag and rerun (--helpfull lists the flags).']


def _lines_for(error: BaseException) -> list[str]:
  if isinstance(error, UserError):
    return error.lines()
  if isinstance(error, PATH_ERRORS) and error.filename:
    return [f'{error.strerror or type(error).__name__}: {error.filename}',
            f'{error.filename}: check the path and rerun.']
  return str(error).splitlines() or [type(error).__name__]


def fit(lines: Sequence[str], max_lines: int = MAX_LINES) -> list[str]:
  """At most ``max_lines`` lines; the overflow joins the line before the last, so the last
  line (the key or path and what to do) always stays last."""
  lines = [line.rstrip() for line in lines if line.strip()]
  if len(lines) <= max_lines:
    return lines
  middle = '; '.join(line.strip() for line in lines[max_lines - 2:-1])
  return lines[:max_lines - 2] + [middle, lines[-1]]


def exit_with(lines: Sequence[str], code: int, *, at_once: bool = False) -> None:
  """Prints ``lines`` (fitted) and exits; ``at_once`` skips the interpreter's shutdown."""
  lines = list(lines)
  lines[0] = f'Error {DEBUG_HINT}: {lines[0]}'
  sys.stdout.flush()
  sys.stderr.write('\n'.join(fit(lines)) + '\n')
  sys.stderr.flush()
  if at_once:
    # Orbax's and clu's background threads would print their own copies of a disk-full
    # error at interpreter shutdown.
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


def _debug() -> bool:
  return os.environ.get(DEBUG_ENV, '') not in ('', '0')


def is_user_error(error: BaseException) -> bool:
  from absl import app, flags
  return isinstance(error, (UserError, app.UsageError, flags.Error) + PATH_ERRORS)


def guard(main: Callable, *args, **kwargs):
  """Calls ``main``; a user error or a full disk becomes a short message and an exit."""
  try:
    return main(*args, **kwargs)
  except SystemExit as error:
    # raise SystemExit('message'): the argparse entry points' own way to report a mistake.
    if isinstance(error.code, str) and not _debug():
      exit_with(error.code.removeprefix('error: ').splitlines(), EXIT_USER_ERROR)
    raise
  except Exception as error:  # pylint: disable=broad-except
    if _debug():
      raise
    if is_disk_full(error):
      exit_with(_lines_for(error) if isinstance(error, DiskFullError) else
                [f'{os.strerror(errno.ENOSPC)}: {error}'.splitlines()[0],
                 'Free space and rerun to resume from the last checkpoint.'], EXIT_DISK_FULL,
                at_once=True)
    if isinstance(error, RunStopped):
      exit_with(_lines_for(error), EXIT_STOPPED)
    if is_user_error(error):
      exit_with(_lines_for(error), EXIT_USER_ERROR)
    raise
  except KeyboardInterrupt:
    # Only before or after the training loop, which turns SIGINT into a saved stop itself.
    if _debug():
      raise
    exit_with(['Interrupted.', 'Rerun the same command to resume from the last checkpoint.'],
              EXIT_STOPPED)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing with short errors: unknown keys, wrong values, a missing --config."""
  from absl import flags
  try:
    remaining = flags.FLAGS(argv)
    for name in _config_flag_names():
      # ml_collections defers a config file's load error to the first access: make it now.
      getattr(flags.FLAGS[name].value, 'lock', None)
    return remaining
  except Exception as error:  # pylint: disable=broad-except
    if _debug():
      raise
    exit_with(describe_flag_error(error, argv), EXIT_USER_ERROR)


def run(main: Callable[[list[str]], None]) -> None:
  """absl.app.run(main) with short errors for the user's mistakes (see the module docstring)."""
  from absl import app
  app.run(lambda argv: guard(main, argv), flags_parser=parse_flags)
