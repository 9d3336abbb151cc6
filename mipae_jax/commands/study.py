"""mipae-study: compares methods over seeds, every (method, seed) an ordinary run, then
the statistics.

  mipae-study --config=demo --methods=mipae,drnet --seeds=0,1,2 --workdir=studies/demo
  mipae-study --workdir=studies/demo --aggregate_only

Each run is `mipae-train --config=CONFIG --config.loss.name=METHOD --config.seed=SEED
--workdir=DIR/METHOD-sSEED` (plus any `--config.FIELD=VALUE` given here, passed to every
run), so it checkpoints and resumes as any run does; a finished run is skipped. The
config is validated for each method before any run starts. Then
`mipae_jax.study.aggregate` writes DIR/results.json, results.md and the pictures.

Stopping: SIGINT (Ctrl-C) or SIGTERM to the study is passed on to the running run(s) (as
SIGTERM, see `STOP_RUN`); each saves a checkpoint and stops, no further run starts, and
the study exits 128+signal naming them; the same command resumes. A run that stops on a
signal of its own stops the study the same way; a run that fails stops it with status 1,
naming the run's log (DIR/METHOD-sSEED/study.log).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from typing import IO

from mipae_jax import cli, errors, losses, study

POLL_SECONDS = 0.2  # How often the study looks at its running runs.
# What a signal to the study sends its running runs, whichever it was. mipae-train's
# training loop takes SIGTERM and SIGINT alike as a request to save and stop, and a
# repeated one as the same request (Ctrl-C in a terminal reaches the runs too). Before
# that loop (starting, compiling) or after it (evaluating) SIGTERM ends a run at once,
# with nothing unsaved, while a SIGINT there can be lost: the KeyboardInterrupt it raises
# may land in a library's callback, which swallows it, and the run trains on.
STOP_RUN = signal.SIGTERM


def _ints(text: str) -> list[int]:
  try:
    values = [int(s) for s in text.split(',') if s.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'expected comma-separated integers, got {text!r}') from None
  if any(v < 0 for v in values):
    raise argparse.ArgumentTypeError(f'seeds are integers >= 0, got {text!r}')
  return values


def _repeated(values) -> list:
  return sorted({v for v in values if values.count(v) > 1}, key=values.index)


def parse(argv):
  parser = cli.ArgumentParser(prog='mipae-study', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', help='a packaged config (e.g. study, demo) or a config '
                      'file, as for mipae-train')
  parser.add_argument('--methods', default='mipae,drnet',
                      help=f'comma-separated, from {losses.names()}')
  parser.add_argument('--seeds', type=_ints, default=[0, 1, 2])
  parser.add_argument('--workdir', required=True, help='the study directory')
  parser.add_argument('--jobs', type=int, default=1, help='runs at a time')
  parser.add_argument('--aggregate_only', action='store_true')
  args, rest = parser.parse_known_args(argv)
  stray = [a for a in rest if not a.startswith('-')]
  if stray:
    parser.error(f'unexpected argument(s) {stray}: every option is --name=value '
                 '(--config.FIELD=VALUE for the runs). A value with spaces must be quoted '
                 '(--workdir="my runs/x"), or it splits into such arguments')
  bad = [a for a in rest if not a.startswith('--config.')]
  if bad:
    parser.error(f'unknown arguments {bad}: only --config.FIELD=VALUE overrides pass '
                 'through to the runs')
  args.overrides = rest
  args.methods = [m for m in args.methods.split(',') if m]
  unknown = [m for m in args.methods if m not in losses.names()]
  if unknown:
    parser.error(f'--methods: {unknown} not in {losses.names()}')
  for flag, values in (('--methods', args.methods), ('--seeds', args.seeds)):
    twice = _repeated(values)
    if twice:
      parser.error(f'{flag} lists {", ".join(map(str, twice))} more than once: each '
                   '(method, seed) is one run, listed once')
  if not args.methods or not args.seeds:
    parser.error('--methods and --seeds each need at least one value')
  if not args.aggregate_only and not args.config:
    parser.error('--config is required unless --aggregate_only')
  if args.jobs < 1:
    parser.error('--jobs must be >= 1')
  for o in args.overrides:
    if o.split('=')[0] in ('--config.loss.name', '--config.seed'):
      parser.error(f'{o}: the study sets loss.name and seed itself (--methods, --seeds)')
  return args


def train_command(args, method: str, seed: int, run_dir: str) -> list[str]:
  """The `mipae-train` command line of one run."""
  return [sys.executable, '-m', 'mipae_jax.commands.train', f'--config={args.config}',
          f'--config.loss.name={method}', f'--config.seed={seed}', f'--workdir={run_dir}',
          *args.overrides]


@dataclasses.dataclass
class _Running:
  name: str
  proc: subprocess.Popen
  log: IO
  log_path: str
  t0: float


def _add_time(run_dir: str, seconds: float) -> None:
  """Wall time summed over every invocation, so a resumed run reports all it cost."""
  path = os.path.join(run_dir, study.TIME_FILE)
  spent = 0.0
  if os.path.exists(path):
    with open(path) as f:
      spent = json.load(f)['seconds']
  with open(path, 'w') as f:
    json.dump({'seconds': spent + seconds}, f)


def _signal_name(signum: int) -> str:
  try:
    return signal.Signals(signum).name
  except ValueError:
    return f'signal {signum}'


def _stopped_by(code: int) -> int | None:
  """The signal a run stopped on: exit status 128+N after saving (mipae-train's
  SIGINT/SIGTERM), or killed by signal N; None for any other status."""
  if code < 0:
    return -code
  if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
    return code - 128
  return None


def _last_line(path: str) -> str:
  try:
    with open(path, errors='replace') as f:
      lines = [line.strip() for line in f.readlines()[-50:] if line.strip()]
  except OSError:
    return ''
  return errors.first_line(lines[-1], 200) if lines else ''


def run_all(args, todo) -> tuple[int, str] | None:
  """Runs (or resumes, or skips) every (method, seed) of `todo`, `args.jobs` at a time.

  Returns None when every run finished, else (exit status, one-line message): a signal
  to the study (SIGINT, SIGTERM) is passed on to the running runs, which save and stop,
  and no further run starts (128+signal); so does a run that stops on a signal itself;
  a run that fails stops the study (1), naming its log.
  """
  pending = []
  for method, seed in todo:
    name = study.run_name(method, seed)
    if study.is_complete(os.path.join(args.workdir, name)):
      print(f'[study] {name}: finished, skipped', flush=True)
    else:
      pending.append((method, seed))
  running: dict[str, _Running] = {}
  signalled: list[int] = []
  interrupted: list[tuple[str, int]] = []  # (run, signal it stopped on)
  failed: list[tuple[str, int, str]] = []  # (run, exit status, log)

  def forward(signum, frame):
    del frame
    signalled.append(signum)
    for r in list(running.values()):
      r.proc.send_signal(STOP_RUN)  # Not to a run that has ended.

  previous = {}
  for sig in (signal.SIGINT, signal.SIGTERM):
    try:
      previous[sig] = signal.signal(sig, forward)
    except ValueError:  # Not the main thread: signals stay as they were.
      pass
  try:
    while running or (pending and not (signalled or interrupted or failed)):
      while pending and len(running) < args.jobs and not (signalled or interrupted or failed):
        method, seed = pending.pop(0)
        name = study.run_name(method, seed)
        run_dir = os.path.join(args.workdir, name)
        cmd = train_command(args, method, seed, run_dir)
        print(f'[study] {name}: {" ".join(cmd[1:])}', flush=True)
        os.makedirs(run_dir, exist_ok=True)
        log_path = os.path.join(run_dir, 'study.log')
        log = open(log_path, 'a')  # noqa: SIM115 - closed when the run ends.
        running[name] = _Running(name, subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT), log, log_path, time.time())
        if signalled:  # Arrived while it was being started.
          running[name].proc.send_signal(STOP_RUN)
      time.sleep(POLL_SECONDS)
      for name, r in list(running.items()):
        code = r.proc.poll()
        if code is None:
          continue
        del running[name]
        r.log.close()
        _add_time(os.path.join(args.workdir, name), time.time() - r.t0)
        if code == 0:
          print(f'[study] {name}: done in {time.time() - r.t0:.0f} s', flush=True)
        elif _stopped_by(code) or signalled:
          interrupted.append((name, _stopped_by(code) or signalled[0]))
        else:
          failed.append((name, code, r.log_path))
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    for r in running.values():  # Only after an error in this loop itself.
      r.proc.send_signal(signal.SIGTERM)
  names = ', '.join(n for n, _ in interrupted)
  if signalled:
    what = f'interrupted {names}' if interrupted else 'no run was interrupted'
    return 128 + signalled[0], (
        f'stopped by {_signal_name(signalled[0])}: {what}; no further run was started. '
        'Run the same command to resume (finished runs are skipped).')
  if interrupted:
    signum = interrupted[0][1]
    return 128 + signum, (
        f'{names} stopped on {_signal_name(signum)}; no further run was started. Run the '
        'same command to resume (finished runs are skipped).')
  if failed:
    said = []
    for name, code, log_path in failed:
      last = _last_line(log_path)
      said.append(f'{name} failed with exit status {code} (log {log_path}'
                  + (f'; its last line: {last})' if last else ')'))
    return 1, ('; '.join(said) + '. No further run was started; fix the cause and run the '
               'same command again (finished runs are skipped).')
  return None


def main(argv=None) -> int:
  args = parse(sys.argv[1:] if argv is None else argv)
  runs = None
  try:
    if not args.aggregate_only:
      if os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
        raise errors.WorkdirError(f'--workdir={args.workdir} is a file, not a directory: '
                                  'pass the directory the study keeps its runs in.')
      study.check_configs(args.config, args.overrides, args.methods, args.seeds[0])
      todo = [(m, s) for s in args.seeds for m in args.methods]
      if os.path.isdir(args.workdir):  # A run resumed or skipped must be the one named.
        study.check_identity(args.workdir, [study.run_name(m, s) for m, s in todo])
      os.makedirs(args.workdir, exist_ok=True)
      stopped = run_all(args, todo)
      if stopped:
        code, message = stopped
        print(f'[study] {message}', file=sys.stderr, flush=True)
        return code
      runs = [study.run_name(m, s) for m, s in todo]
    results = study.aggregate(args.workdir, runs)
  except (errors.UserError, ValueError) as e:
    print(f'[study] {e}', file=sys.stderr, flush=True)
    return getattr(e, 'exit_code', 2)
  except OSError as e:  # Writing the study's tables onto a full or read-only disk.
    disk = errors.disk_error(e, args.workdir)
    if disk is None:
      raise
    print(f'[study] {disk}', file=sys.stderr, flush=True)
    return disk.exit_code
  for m, e in results['methods'].items():
    mig = e.get('mig', {})
    print(f'[study] {m}: MIG {mig.get("mean", float("nan")):.4f} ± '
          f'{mig.get("ci95", float("nan")):.4f} over seeds {e["seeds"]}')
  print(f'[study] wrote {os.path.join(args.workdir, study.RESULTS_MD)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
