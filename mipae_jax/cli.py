"""What the command-line entry points share: bad input refused in one line.

`experiments.main`, `experiments.evaluate`, `experiments.study`, `mipae_jax.data.preview`
call `run(main)` (absl) or `guarded(main)` (argparse). A `mipae_jax.errors.UserError`
(a bad config field, a data file, a workdir, a run that must stop) is printed as its
message alone and the process exits with the error's status (2 for bad input, 1 for a
run failure); any other exception is a bug and keeps its traceback. `MIPAE_VERBOSE=1` or
`--verbose` shows the traceback of every error.

The `--config` file and each `--config.<field>=<value>` override are checked before
absl parses them, so a missing file, a file without `get_config()` or a misspelt field
is named in one line instead of ml_collections' tracebacks.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence

from mipae_jax import errors

VERBOSE_ENV = 'MIPAE_VERBOSE'


def verbose(argv: Sequence[str] | None = None) -> bool:
  """Whether full tracebacks were asked for (`MIPAE_VERBOSE=1` or `--verbose`)."""
  argv = sys.argv if argv is None else argv
  return os.environ.get(VERBOSE_ENV, '') not in ('', '0') or '--verbose' in argv


def _refuse(error: BaseException, code: int = 2):
  print(f'{type(error).__name__}: {error}', file=sys.stderr, flush=True)
  sys.exit(code)


def guarded(fn: Callable, *args, **kwargs):
  """Calls `fn`; a `UserError` becomes its message on stderr and `sys.exit(code)`."""
  try:
    return fn(*args, **kwargs)
  except errors.UserError as e:
    if verbose():
      raise
    _refuse(e, e.exit_code)


# ----------------------------------------------------------------- Config files.


def _flag_values(argv: Sequence[str], name: str) -> list[tuple[int, str]]:
  """(index, value) of every `--name=value` or `--name value` in `argv`."""
  out = []
  for i, a in enumerate(argv):
    if a.startswith(f'--{name}='):
      out.append((i, a.split('=', 1)[1]))
    elif a == f'--{name}' and i + 1 < len(argv):
      out.append((i, argv[i + 1]))
  return out


def load_config_file(spec: str):
  """The ConfigDict of `path[:arg]` (ml_collections' syntax); ConfigError if the file is
  missing, does not import, or has no `get_config()`."""
  path, _, arg = spec.partition(':')
  if not path:
    raise errors.ConfigError('--config is empty: pass a config file, e.g. '
                             '--config=experiments/configs/demo.py')
  if not os.path.isfile(path):
    raise errors.ConfigError(
        f'config file {path!r} not found (looked from {os.getcwd()!r}). Pass an existing '
        'file, e.g. --config=experiments/configs/demo.py.')
  module_spec = importlib.util.spec_from_file_location('_mipae_config_check', path)
  if module_spec is None or module_spec.loader is None:
    raise errors.ConfigError(f'config file {path!r} is not a Python file: it must define '
                             'get_config() returning an ml_collections.ConfigDict.')
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001 - any failure of the user's file is reported.
    raise errors.ConfigError(
        f'config file {path!r} fails to import: {type(e).__name__}: '
        f'{errors.first_line(str(e))}. It must be Python defining get_config().') from e
  get_config = getattr(module, 'get_config', None)
  if not callable(get_config):
    raise errors.ConfigError(
        f'config file {path!r} defines no get_config(): it must define get_config() '
        'returning an ml_collections.ConfigDict (see experiments/configs/default.py).')
  try:
    return get_config(arg) if arg else get_config()
  except TypeError as e:
    raise errors.ConfigError(f'{spec!r}: get_config({arg!r}) failed: {e}.') from e


def field_value(config, field: str):
  """`config.<field>` for a dotted name; ConfigError naming the nearest fields if absent."""
  node = config
  parts = field.split('.')
  for depth, part in enumerate(parts):
    keys = list(node.keys()) if hasattr(node, 'keys') else []
    if part not in keys:
      where = '.'.join(parts[:depth])
      close = difflib.get_close_matches(part, [str(k) for k in keys], n=3)
      dot = f'{where}.' if where else ''
      hint = f' Did you mean {", ".join(dot + c for c in close)}?' if close else ''
      known = ', '.join(sorted(str(k) for k in keys)) or 'none'
      raise errors.ConfigError(
          f'config has no field {field!r} ({where or "the config"} has: {known}).{hint}')
    node = node[part]
  return node


def parse_value(field: str, text: str, current):
  """`text` as a value for a field now holding `current` (its type decides)."""
  if isinstance(current, bool):
    if text.lower() in ('true', '1'):
      return True
    if text.lower() in ('false', '0'):
      return False
    raise errors.ConfigError(f'{field}={text!r}: expected true or false.')
  if isinstance(current, str):
    return text
  if isinstance(current, float):
    try:
      return float(text)  # As absl parses a float flag: 'nan' and 'inf' included.
    except ValueError:
      pass
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise errors.ConfigError(
        f'{field}={text!r} is not a value of the field\'s type '
        f'({type(current).__name__}, now {current!r}).') from None
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if current is not None and not isinstance(value, type(current)):
    raise errors.ConfigError(
        f'{field}={text!r}: expected a {type(current).__name__} (now {current!r}), found '
        f'a {type(value).__name__}.')
  return value


def check_config_flags(argv: Sequence[str], flag: str = 'config') -> None:
  """Refuses a bad `--config` file or a `--config.<field>` naming no field, in one line."""
  specs = _flag_values(argv, flag)
  if not specs:
    return
  config = load_config_file(specs[-1][1])
  for a in argv:
    if a.startswith(f'--{flag}.'):
      field, sep, text = a[len(flag) + 3:].partition('=')
      current = field_value(config, field)
      if sep and not hasattr(current, 'keys'):
        parse_value(f'--{flag}.{field}', text, current)


class _OneLine:
  """A logging filter that keeps the first line of a library's error record and drops
  its traceback: a failed Orbax save logs one traceback per background thread (dozens
  of them, with TensorStore specs), and the CheckpointError that follows says it all."""

  def filter(self, record) -> bool:
    if record.name == 'asyncio' and str(record.msg).startswith(
        'Task exception was never retrieved'):
      return False  # One per array write of a failed save: the same error again.
    if record.exc_info or record.exc_text or '\n' in str(record.msg):
      record.msg = errors.first_line(record.getMessage(), 400)
      record.args = ()
      record.exc_info = record.exc_text = record.stack_info = None
    return True


def setup_logging() -> None:
  """INFO lines from mipae_jax; only warnings from the libraries (Orbax logs every file
  at INFO, JAX every backend it did not find), one line each unless `verbose()`."""
  import logging

  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')
  for name in ('absl', 'jax', 'orbax', 'asyncio'):
    logging.getLogger(name).setLevel(logging.WARNING)
    if not verbose():
      logging.getLogger(name).addFilter(_OneLine())
  if not verbose():
    sys.excepthook = _quiet_closed_loop(sys.excepthook)
    unraisable = sys.unraisablehook
    sys.unraisablehook = lambda u: (None if _closed_loop(u.exc_value) else unraisable(u))


def _quiet_closed_loop(hook):
  """After a failed Orbax save, TensorStore's I/O threads still call back into the
  save's (closed) asyncio loop, and each callback's RuntimeError is printed through
  `sys.unraisablehook` (or `sys.excepthook`) as a traceback of its own. They say nothing
  the CheckpointError does not; every other exception goes to the hook unchanged."""

  def quiet(kind, value, tb):
    if not _closed_loop(value):
      hook(kind, value, tb)

  return quiet


def _closed_loop(value) -> bool:
  return isinstance(value, RuntimeError) and str(value) == 'Event loop is closed'


def run(main: Callable, argv: Sequence[str] | None = None, config_flag: str | None = 'config'
        ) -> None:
  """`absl.app.run(main)` with the checks and one-line refusals above."""
  from absl import app, flags

  if 'verbose' not in flags.FLAGS:
    flags.DEFINE_boolean('verbose', False, 'Show the full traceback of every error '
                         f'(also: {VERBOSE_ENV}=1).')
  argv = list(sys.argv if argv is None else argv)
  started = []

  def wrapped(args):
    started.append(True)
    return guarded(main, args)

  try:
    if config_flag:
      check_config_flags(argv, config_flag)
    app.run(wrapped, argv=argv)
  except errors.UserError as e:
    if verbose(argv):
      raise
    _refuse(e, e.exit_code)
  except (AttributeError, ValueError, TypeError, KeyError, OSError) as e:
    if started or verbose(argv):
      raise  # From the run itself: a bug, keep the traceback.
    # From absl / ml_collections parsing the command line.
    _refuse(errors.ConfigError(f'the command line could not be parsed: '
                               f'{errors.first_line(str(e))}'), 2)
