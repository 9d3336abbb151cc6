"""The errors a user fixes from the message alone.

Everything the library refuses because of what it was given (a config field, a data
file, a workdir) raises a subclass of `UserError`. The command-line entry points
(`mipae_jax.cli`) print such an error as one line and exit with its `exit_code`, without
a traceback (set `MIPAE_VERBOSE=1` or pass `--verbose` to see it); any other exception
is a bug and keeps its traceback. Each class also derives from the built-in type callers
caught before it existed (`ValueError`, `FileNotFoundError`, ...), so `except ValueError`
keeps working.
"""

from __future__ import annotations

import errno
import os


class UserError(Exception):
  """Base: the message says what was wrong and how to fix it."""

  exit_code = 2  # Bad input (as argparse and absl use for bad flags).


class ConfigError(UserError, ValueError):
  """A config field is missing, unknown, or has a value that is not allowed."""


class DataError(UserError, ValueError):
  """A data file exists but does not hold what the dataset needs."""


class DataNotFoundError(UserError, FileNotFoundError):
  """A data file or directory the config names does not exist."""


class WorkdirError(UserError, RuntimeError):
  """The workdir cannot be used: not a directory, not writable, not a run directory, or
  in use by another run."""


class NotARunError(UserError, FileNotFoundError):
  """A workdir lacks what the command needs (a recorded config, a trained autoencoder)."""


class RunFailure(UserError, RuntimeError):
  """A run stopped on a condition found while running (a diverged loss, a failed save);
  the message says what is kept and how to go on. Exit status 1: not bad input."""

  exit_code = 1


def first_line(text: str, limit: int = 300) -> str:
  """The first non-empty line of `text`, cut to `limit` characters: library errors
  (TensorStore specs, XLA dumps) can run to dozens of lines that bury the cause."""
  for line in str(text).splitlines():
    if line.strip():
      line = line.strip()
      return line if len(line) <= limit else line[:limit - 3] + '...'
  return ''


def describe(error: BaseException, limit: int = 600) -> str:
  """`Type: first line` of `error` and of each exception it was raised from, joined by
  '; caused by ', without TensorStore's spec dump (its useful part, the file and the
  byte range, is in the cause)."""
  parts, seen = [], set()
  e = error
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    line = first_line(str(e).split('See full TensorStore details')[0], 300).rstrip(' .')
    parts.append(f'{type(e).__name__}: {line}' if line else type(e).__name__)
    e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
  text = '; caused by '.join(parts)
  return text if len(text) <= limit else text[:limit - 3] + '...'


# How XLA statuses begin; JAX raises some failed collectives as a ValueError with one.
_XLA_STATUSES = ('UNKNOWN:', 'UNAVAILABLE:', 'INTERNAL:', 'ABORTED:', 'DEADLINE_EXCEEDED:',
                 'CANCELLED:')


def lost_peer(error: BaseException) -> bool:
  """Whether `error`, or one in its chain, is a cross-process collective or barrier that
  failed, as when another process died: a JAX runtime error, or the ValueError carrying
  an XLA status that JAX raises for some (`UNKNOWN: Gloo AllGather failed: ...`). Always
  False in a single process."""
  import jax
  if jax.process_count() == 1:
    return False
  e = error
  while e is not None:
    if isinstance(e, jax.errors.JaxRuntimeError) or (
        type(e) is ValueError and str(e).startswith(_XLA_STATUSES)):
      return True
    e = e.__cause__ or e.__context__
  return False


# What the disk a command writes to can refuse, with how to fix it and the exit status: a
# full disk is a run failure (1), a path that cannot be written is bad input (2). Not bugs,
# so the tools print them in one line (`cli.guarded`) instead of a traceback.
_DISK_ERRORS = {
    errno.ENOSPC: ('free space on that disk (or point the command at another one)', 1),
    errno.EDQUOT: ('free space within your disk quota (or write elsewhere)', 1),
    errno.EROFS: ('choose a path on a writable disk', 2),
    errno.EACCES: ('choose a path you may write to, or change its permissions', 2),
    errno.EPERM: ('choose a path you may write to, or change its permissions', 2),
    errno.ENOTDIR: ('a part of that path is a file, not a folder: choose another path', 2),
    errno.EEXIST: ('that path is a file, not a folder: choose another path', 2),
}


class DiskError(UserError, OSError):
  """Writing a file failed on a condition of the disk (full, read-only, not permitted, a
  file where a folder should be); `exit_code` 1 for a full disk, 2 for a bad path."""


def disk_error(error: BaseException, where: str | None = None) -> DiskError | None:
  """A one-line `DiskError` for `error` when it, or one in its chain, is an `OSError` of
  the disk (`_DISK_ERRORS`); else None. `where`: the folder the command writes to, named
  when the OS error carries no file name (a failed write or flush)."""
  e, seen = error, set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _DISK_ERRORS:
      fix, code = _DISK_ERRORS[e.errno]
      path = e.filename or where
      target = f'could not write {path}' if path else 'could not write to disk'
      reason = e.strerror or os.strerror(e.errno)
      out = DiskError(f'{target}: {reason}. To fix: {fix}, then rerun the same command; '
                      'what was saved before is kept.')
      out.exit_code = code
      return out
    e = e.__cause__ or e.__context__
  return None
