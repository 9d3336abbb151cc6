"""The run directory: refused when unusable, and held by one run at a time.

`prepare(path)` creates the directory (or accepts an existing run directory) and refuses,
in one line naming the path and the OS's reason, an empty path, a file, a directory that
cannot be created or written, and a non-empty directory that is not a run (the user's
own files, which a run would write beside and whose `metrics.jsonl` it would append to;
a `config.json` that is not a run's record). A run whose record was moved aside (its
checkpoints and logs only) is accepted: given its original config, it records it anew.

`RunLock(path)` is an exclusive `flock` on `<workdir>/run.lock`, holding the holder's
pid and host. The kernel drops it when the holder exits in any way (SIGKILL included),
so a crashed run never leaves a lock that blocks the next one; the pid and host written
in the file are only read to name the holder of a lock that is still held.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket

from mipae_jax import errors

CONFIG_FILE = 'config.json'  # A run's config record (config_record.record_config): its mark.
LOCK_FILE = 'run.lock'
# Files a run directory may hold before its config is recorded: the lock of a run that
# stopped before writing config.json, and what `mipae-study` writes first.
EARLY_FILES = frozenset({LOCK_FILE, 'study.log', 'study_time.json'})
# Everything else a run writes. A directory holding its `checkpoints` and nothing but these
# is a run that lost its config record: given the original config again, it resumes.
RUN_FILES = EARLY_FILES | {'checkpoints', 'metrics.jsonl', 'metrics.jsonl.unreadable',
                           'tensorboard', 'eval', 'profile', 'dataset.json'}
# The sections every run's config record has: a config.json without them is not a run's.
RECORD_SECTIONS = ('data', 'model', 'train')


def atomic_write_text(path: str, text: str) -> None:
  """Writes `text` to `path` so readers see the old file or the new one, never half.

  The data is fsync'ed before `os.replace`, so the rename cannot land ahead of it.
  """
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def prepare(path: str) -> str:
  """Creates or checks the run directory `path`; returns it as an absolute path.

  Raises:
    WorkdirError: `path` is empty, a file, cannot be created or written, or is a
      non-empty directory without a run's `config.json`.
  """
  if not path or not str(path).strip():
    raise errors.WorkdirError('--workdir is empty: pass a directory for the run, e.g. '
                              '--workdir=runs/demo')
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  if os.path.exists(path) and not os.path.isdir(path):
    raise errors.WorkdirError(f'workdir {path} is a file, not a directory: pass a new '
                              'or existing run directory as --workdir.')
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise errors.WorkdirError(f'workdir {path} cannot be created: {e.strerror} '
                              f'(errno {e.errno}). Pass a --workdir in a writable place.'
                              ) from e
  probe = os.path.join(path, f'.write-test-{os.getpid()}')
  try:
    with open(probe, 'w'):
      pass
    os.remove(probe)
  except OSError as e:
    raise errors.WorkdirError(f'workdir {path} is not writable: {e.strerror} '
                              f'(errno {e.errno}). Make it writable or pass another '
                              '--workdir.') from e
  entries = {e for e in os.listdir(path) if not e.startswith(CONFIG_FILE + '.')}
  if CONFIG_FILE in entries and not _is_run_record(os.path.join(path, CONFIG_FILE)):
    raise errors.WorkdirError(
        f'workdir {path} is not a run directory: its {CONFIG_FILE} is not a config that '
        f'mipae-train recorded (no {"/".join(RECORD_SECTIONS)} sections). A run would '
        'write among its files: pass a new or empty --workdir.')
  lost_record = 'checkpoints' in entries and entries <= RUN_FILES
  if CONFIG_FILE not in entries and entries - EARLY_FILES and not lost_record:
    shown = sorted(entries - EARLY_FILES)
    more = f' (+{len(shown) - 5} more)' if len(shown) > 5 else ''
    raise errors.WorkdirError(
        f'workdir {path} is not empty and is not a run directory (no {CONFIG_FILE}); it '
        f'holds {", ".join(shown[:5])}{more}. A run would write its checkpoints and logs '
        'among these files: pass a new or empty --workdir.')
  return path


def _is_run_record(path: str) -> bool:
  """Whether `path` is, or may be, a run's config record: True for one that cannot be
  parsed (a run's record cut short is refused later, saying how to restore it)."""
  import json

  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, ValueError):
    return True
  return isinstance(record, dict) and all(k in record for k in RECORD_SECTIONS)


class RunLock:
  """Exclusive hold of a run directory for the life of one run (a context manager).

  Example:
    with RunLock(workdir):
      ...  # train; a second run on `workdir` gets WorkdirError naming this one.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(os.fspath(workdir), LOCK_FILE)
    self._fd = None

  def acquire(self) -> RunLock:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = os.pread(fd, 200, 0).decode(errors='replace').strip() or 'unknown'
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise errors.WorkdirError(f'cannot lock {self.path}: {e.strerror}. Pass a --workdir '
                                  'on a filesystem with file locks.') from e
      raise errors.WorkdirError(
          f'{os.path.dirname(self.path)} is in use by another run ({holder}). One run per '
          'workdir: wait for it to finish, stop it, or pass another --workdir.') from None
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f'pid {os.getpid()} on host {socket.gethostname()}\n'.encode(), 0)
    except OSError as e:  # A full disk: name the file (a write error names none).
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)
      raise OSError(e.errno, e.strerror, self.path) from None
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
