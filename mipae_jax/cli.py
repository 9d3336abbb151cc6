"""What the command-line tools share: bad input refused in one line.

The tools of `mipae_jax.commands` and `mipae_jax.data.prepare` call `run(main)` (absl);
`mipae-study` and `mipae-preview` parse with `ArgumentParser` (argparse, one-line errors)
and call `guarded(main)`. `--help` exits 0, bad input 2, a failed run 1. A
`mipae_jax.errors.UserError` (a bad config field, a data file, a workdir, a run that must
stop) is printed as its message alone and the process exits with the error's status (2
for bad input, 1 for a run failure); any other exception is a bug and keeps its
traceback. `MIPAE_VERBOSE=1` or `--verbose` shows the traceback of every error.

`--config=NAME[:VARIANT]` names a packaged config (`mipae_jax.configs`), anything else
a config file. The config and each `--config.<field>=<value>` override are checked before
absl parses them, so a missing file, a file without `get_config()` or a misspelt field
is named in one line instead of ml_collections' tracebacks.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence

from mipae_jax import errors

VERBOSE_ENV = 'MIPAE_VERBOSE'
HELP_FLAGS = ('--help', '-h', '-?', '--helpshort', '--helpfull')


def verbose(argv: Sequence[str] | None = None) -> bool:
  """Whether full tracebacks were asked for (`MIPAE_VERBOSE=1` or `--verbose`)."""
  argv = sys.argv if argv is None else argv
  return os.environ.get(VERBOSE_ENV, '') not in ('', '0') or '--verbose' in argv


def _refuse(error: BaseException, code: int = 2):
  print(f'{type(error).__name__}: {error}', file=sys.stderr, flush=True)
  sys.exit(code)


_WRITES_TO: list[str] = []  # The folder the running tool writes to (`writes_to`).


def writes_to(path: str) -> None:
  """Names the folder this tool writes to, for a disk error whose OS error carries no
  file name (a failed write or flush names none)."""
  _WRITES_TO[:] = [os.path.abspath(os.path.expanduser(path))]


def guarded(fn: Callable, *args, **kwargs):
  """Calls `fn`; a `UserError`, or an OS error of the disk (full, read-only, not a
  folder: `errors.disk_error`), becomes one line on stderr and `sys.exit(code)`."""
  try:
    return fn(*args, **kwargs)
  except errors.UserError as e:
    if verbose():
      raise
    _refuse(e, e.exit_code)
  except Exception as e:  # noqa: BLE001 - only disk errors are caught, the rest re-raised.
    disk = errors.disk_error(e, _WRITES_TO[0] if _WRITES_TO else None)
    if disk is None or verbose():
      raise
    _refuse(disk, disk.exit_code)


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


def resolve_config_spec(spec: str) -> str:
  """`NAME[:ARG]` of a packaged config -> `its file[:ARG]` (ml_collections reads files);
  a file path is returned as it is. ConfigError for a name that is neither."""
  from mipae_jax import configs

  name, sep, arg = spec.partition(':')
  if os.path.isfile(name):
    return spec
  if name in configs.names():
    return configs.path(name) + sep + arg
  if name and not name.endswith('.py') and os.sep not in name:
    try:
      configs.path(name)  # Raises, naming the packaged configs and the nearest one.
    except ValueError as e:
      raise errors.ConfigError(f'--config={spec}: {e}') from None
  return spec


def load_config_file(spec: str):
  """The ConfigDict of a packaged config `NAME[:ARG]` or a file `path[:arg]`
  (ml_collections' syntax); ConfigError if the file is missing, does not import, or has
  no `get_config()`."""
  path, _, arg = resolve_config_spec(spec).partition(':')
  if not path:
    raise errors.ConfigError('--config is empty: pass a packaged config or a config file, '
                             'e.g. --config=demo')
  if not os.path.isfile(path):
    raise errors.ConfigError(
        f'config file {path!r} not found (looked from {os.getcwd()!r}). Pass a packaged '
        'config (e.g. --config=demo, --config=dsprites:drnet) or an existing file.')
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
        'returning an ml_collections.ConfigDict (see mipae_jax/configs/default.py).')
  try:
    return get_config(arg) if arg else get_config()
  except (TypeError, ValueError) as e:
    raise errors.ConfigError(f'{spec!r}: get_config({arg!r}) failed: {e}') from e


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
    if record.name == 'asyncio' and 'exception was never retrieved' in errors.first_line(
        str(record.msg), 200):
      # One per array write of a failed save ('Task', 'Future' or '_GatheringFuture
      # exception was never retrieved', logged when the futures are collected): the
      # same error again.
      return False
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
    import warnings

    # A failed save leaves TensorStore's write coroutines unawaited; the interpreter
    # warns about each when it collects them at exit, after the CheckpointError.
    warnings.filterwarnings('ignore', message=r'coroutine .* was never awaited',
                            category=RuntimeWarning)
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


def fresh_flags(*names: str):
  """absl's FLAGS with `names` (and any `--config.FIELD` flags) undefined, so a tool can
  define its flags anew on every `main()` call: absl keeps a parsed flag's value across
  parses, and two tools in one process (tests, a notebook) define the same names."""
  from absl import flags

  for name in list(flags.FLAGS):
    if name in names or name.startswith('config.'):
      delattr(flags.FLAGS, name)
  return flags.FLAGS


def define_config_flag(help_text: str, argv: Sequence[str] | None) -> None:
  """`--config` (a packaged name or a file, with `--config.FIELD=VALUE` overrides) read
  from `argv` (default `sys.argv`): ml_collections finds the overrides to define there."""
  from ml_collections import config_flags

  config_flags.DEFINE_config_file('config', None, help_text, lock_config=True,
                                  sys_argv=None if argv is None else list(argv))


def cache_dir() -> str:
  """Where the tools and the evaluation keep what they make once and reuse (compiled
  programs, the analogy classifier): `$MIPAE_CACHE_DIR`, default `~/.cache/mipae_jax`."""
  return os.path.expanduser(os.environ.get('MIPAE_CACHE_DIR', '~/.cache/mipae_jax'))


def enable_compilation_cache() -> str | None:
  """Turns on JAX's persistent compilation cache for a command-line tool: a rerun, a
  resume or an evaluation of the same config loads its compiled programs instead of
  compiling them again (the tiny config's way to its first step: 18 s cold, 6 s warm;
  BENCHMARKS.md). A cached program computes the same bits as a fresh compile.

  The cache lives in `$MIPAE_CACHE_DIR/xla` (default `~/.cache/mipae_jax/xla`); a
  `JAX_COMPILATION_CACHE_DIR` already set is left to rule, and `MIPAE_XLA_CACHE=0` turns
  it off. Only the tools call this: importing the library changes no JAX setting.
  Returns the directory, or None when off.
  """
  if os.environ.get('JAX_COMPILATION_CACHE_DIR') or os.environ.get('MIPAE_XLA_CACHE') == '0':
    return None
  import jax

  path = os.path.join(cache_dir(), 'xla')
  jax.config.update('jax_compilation_cache_dir', path)
  # Programs that compile in under half a second are not worth a file each.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  # A cache entry that cannot be written or read (a full disk) only means compiling
  # again: JAX warns with two lines per program, which would bury the one line that
  # matters (a CheckpointError on that same full disk).
  import warnings
  warnings.filterwarnings('ignore', message='Error (writing|reading) persistent compilation '
                          'cache entry', category=UserWarning)
  return path


class UsageError(errors.UserError, ValueError):
  """The command line itself is wrong: an unknown or missing flag, a stray argument."""


def _resolve_config_flags(argv: list[str], flag: str) -> list[str]:
  """`--config=NAME[:ARG]` (or `--config NAME`) rewritten to the packaged file's path."""
  out = list(argv)
  for i, value in _flag_values(argv, flag):
    resolved = resolve_config_spec(value)
    if out[i].startswith(f'--{flag}='):
      out[i] = f'--{flag}={resolved}'
    else:
      out[i + 1] = resolved
  return out


def run(main: Callable, argv: Sequence[str] | None = None, config_flag: str | None = 'config',
        required: Sequence[str] = (), doc: str | None = None) -> None:
  """`absl.app.run(main)` with the checks and one-line refusals above.

  Args:
    main: called with the arguments left after the flags (only the program name: a stray
      argument is refused).
    argv: the command line (default `sys.argv`).
    config_flag: the config-file flag to check (and resolve by name) before parsing.
    required: flags that must be given; a missing one is refused in one line, status 2.
    doc: printed first by `--help`.
  """
  from absl import app, flags

  if 'verbose' not in flags.FLAGS:
    flags.DEFINE_boolean('verbose', False, 'Show the full traceback of every error '
                         f'(also: {VERBOSE_ENV}=1).')
  argv = ['--help' if a == '-h' else a for a in (sys.argv if argv is None else argv)]
  if doc:
    # absl's --help prints the __main__ module's docstring: an alias module's (python -m
    # experiments.main) or none (a console script); the tool's own says what it does.
    sys.modules['__main__'].__doc__ = doc
  started = []

  def parse(args):
    try:
      rest = flags.FLAGS(args)
    except flags.Error as e:
      raise UsageError(f'{errors.first_line(str(e))} (see --help).') from None
    missing = [n for n in required if flags.FLAGS[n].value is None]
    if missing:
      raise UsageError('; '.join(f'--{n} is required ({flags.FLAGS[n].help})'
                                 for n in missing) + ' (see --help).')
    if len(rest) > 1:
      raise UsageError(
          f'unexpected argument(s) {rest[1:]}: every option is --name=value. A value with '
          'spaces must be quoted (--workdir="my runs/x"), or it splits into such arguments.')
    return rest

  def wrapped(args):
    started.append(True)
    enable_compilation_cache()
    return guarded(main, args)

  try:
    if config_flag:
      argv = _resolve_config_flags(argv, config_flag)
      check_config_flags(argv, config_flag)
    app.run(wrapped, argv=argv, flags_parser=parse)
  except SystemExit as e:
    # absl exits 1 after printing --help; help asked for is a success.
    if not started and e.code == 1 and any(a in HELP_FLAGS for a in argv[1:]):
      sys.exit(0)
    raise
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


class ArgumentParser(argparse.ArgumentParser):
  """argparse with the tools' conventions: an error is one line on stderr, status 2."""

  def error(self, message):
    print(f'{self.prog}: error: {message} (see --help)', file=sys.stderr, flush=True)
    sys.exit(2)
