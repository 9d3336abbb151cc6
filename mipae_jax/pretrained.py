"""The shipped pretrained model: exported from a trained run, checked, shown in a report.

  mipae-export --workdir=~/runs/long-mipae-s0 --out=pretrained/moving_dsprites_two_sprites \\
      --analogy_videos=20 --command='experiments/long_run.sh' --machine='2 CPU cores'
  run = mipae_jax.load_run('pretrained/moving_dsprites_two_sprites')   # as a workdir
  python -m mipae_jax.pretrained --workdir=workdirs/demo   # make demo: its report's panel

`export` writes an exported model (`mipae_jax.exported`: config.json, variables.npz,
pretrained.json) of one autoencoder checkpoint of a workdir and the pose LSTM trained on
it, with the training time, the command and the metrics it is given. With
`analogy_videos` it also measures the analogy accuracy on that many test videos and
ships the classifier that read them (`analogy_classifier.npz`, ~2 MB at 64 x 64), so that
`recompute_analogy` gets the recorded numbers back anywhere without training a
classifier. `render_panel` draws the model's analogy grid, reconstructions and
predictions and appends a section naming its steps and training time to a report
(`make demo` calls it on the demo's report after training).

The shipped directory is `pretrained/moving_dsprites_two_sprites` at the top of a clone,
not inside the package: the wheel stays small, and `load_run` reads the directory from
wherever it is (a pip user downloads it from the repository).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
import sys
import tempfile

import numpy as np

from mipae_jax import (
  checkpoint,
  cli,
  config_record,
  data,
  errors,
  exported,
  runs,
  train,
  visualize,
)
from mipae_jax import workdir as workdir_lib
from mipae_jax.metrics import analogy
from mipae_jax.version import __version__

log = logging.getLogger(__name__)

DEFAULT_DIR = os.path.join('pretrained', 'moving_dsprites_two_sprites')
CLASSIFIER_FILE = 'analogy_classifier.npz'
# Fields of `evaluate_analogies`' results that time this machine, not the model.
_TIMES = ('seconds', 'classifier_seconds')
# Begins the report's section; a new panel replaces everything from it to the end.
PANEL_MARK = '<!-- mipae_jax.pretrained: the pretrained model -->'
PANEL_VIDEOS = 6  # Test videos drawn: 5 analogy rows, 3 reconstructions, 4 predictions.


# ------------------------------------------------------------------------- Export.


def lstm_trained_on(config, workdir: str, ae_state):
  """The newest pose-LSTM state of `workdir` if it was trained on `ae_state`, or None if
  the run has none; WorkdirError if it was trained on another autoencoder."""
  newest = runs.newest_lstm(config, workdir)
  if newest is None:
    return None
  state, meta, step = newest
  reason = runs.stale_reason(meta, runs.autoencoder_record(ae_state))
  if reason is not None:
    raise errors.WorkdirError(
        f'the pose LSTM of {workdir} (step {step}) does not go with this autoencoder: '
        f'{reason}. Export the step it was trained on (--step), retrain it on this one '
        '(rerun the run\'s mipae-train command), or export the autoencoder alone '
        '(--nolstm).')
  return state


def training_time(workdir: str, ae_step: int, lstm_step: int | None) -> dict:
  """What the run's last evaluation recorded of its training time (`eval/metrics.json`):
  `{'seconds': both stages' seconds, or None unless that evaluation timed every step of
  each stage up to the exported steps (a resumed run times its last part only),
  'stages': the recorded timings}`."""
  try:
    with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
      timings = json.load(f).get('timings') or {}
  except (OSError, ValueError, AttributeError):
    timings = {}
  if not isinstance(timings, dict):
    timings = {}
  steps = {'ae': ae_step, **({'lstm': lstm_step} if lstm_step is not None else {})}
  stages = {s: timings[s] for s in steps if isinstance(timings.get(s), dict)}
  whole = all(s in stages and stages[s].get('steps') == n
              and stages[s].get('steps_this_run') == n for s, n in steps.items())
  seconds = round(sum(float(stages[s]['seconds']) for s in steps), 1) if whole else None
  return {'seconds': seconds, 'stages': stages}


def _refuse_non_empty(out_dir: str) -> None:
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
    what = 'a non-empty folder' if os.path.isdir(out_dir) else 'not a folder'
    raise errors.WorkdirError(f'--out={out_dir} is {what}: export into a new or empty '
                              'folder (an export never overwrites one).')


def export(workdir: str, out_dir: str, note: dict | None = None, *, step: int | None = None,
           command: str | None = None, machine: str | None = None,
           training_seconds: float | None = None, with_lstm: bool = True,
           analogy_videos: int = 0, analogy_seed: int | None = None,
           classifier: analogy.ClassifierConfig = analogy.DEFAULT,
           cache_dir: str | None = None) -> dict:
  """Exports a run's autoencoder (and the pose LSTM trained on it) to `out_dir`.

  Args:
    workdir: the run directory (`mipae-train`'s).
    out_dir: the folder to write: new, or empty (else WorkdirError).
    note: metrics or words to record as they are (`pretrained.json`'s 'metrics').
    step: the autoencoder step to export (a kept checkpoint); None: the newest.
    command: the command that trained the run, recorded.
    machine: what it trained on, recorded (the report's label names it).
    training_seconds: the training wall time; None: read from the run's last
      evaluation when it timed every step (`training_time`), else not recorded.
    with_lstm: export the pose LSTM (refused if it was trained on another autoencoder).
    analogy_videos: measure the analogy accuracy on this many test videos (0: skip)
      and ship its classifier; `analogy_seed` picks them (default `eval.seed`).
    classifier: the analogy classifier's training (part of its cache key).
    cache_dir: where the classifier is cached (default `cli.cache_dir()/analogy`).
  Returns:
    The record written to `out_dir/pretrained.json`.
  """
  _refuse_non_empty(out_dir)
  if exported.is_exported(workdir):
    raise errors.NotARunError(f'{workdir} is an exported model already: export a run '
                              'directory (mipae-train\'s --workdir).')
  config = config_record.load_config(workdir)
  ae_state = runs.restore_autoencoder(config, workdir, step)
  lstm_state = lstm_trained_on(config, workdir, ae_state) if with_lstm else None
  ae_step = int(ae_state.step)
  lstm_step = None if lstm_state is None else int(lstm_state.step)
  variables = {'autoencoder': train.autoencoder_variables(ae_state),
               'lstm': None if lstm_state is None else lstm_state.lstm.params}
  training = training_time(workdir, ae_step, lstm_step)
  if training_seconds is not None:
    training['seconds'], training['from'] = float(training_seconds), 'given at export'
  elif training['seconds'] is not None:
    training['from'] = 'the run\'s eval/metrics.json timings'
  training['machine'] = machine
  record = {
      'source': {'workdir': os.path.basename(os.path.normpath(os.path.abspath(workdir))),
                 'newest_ae_step': _newest(workdir, 'ae')},
      'ae_step': ae_step, 'lstm_step': lstm_step, 'training': training,
      'command': command, 'metrics': dict(note or {}), 'mipae_jax_version': __version__,
      'exported_at': datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(os.path.abspath(out_dir))}.tmp-',
                         dir=parent)
  os.chmod(tmp, 0o755)  # mkdtemp's is 0o700; the folder is meant to be shared.
  try:
    if analogy_videos:
      record['analogy'] = _measure_analogy(config, variables['autoencoder'], analogy_videos,
                                           analogy_seed, classifier, cache_dir, tmp)
    record = exported.write(tmp, config, variables, record)
    _refuse_non_empty(out_dir)
    os.replace(tmp, out_dir)  # The whole folder appears at once (over an empty one too).
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return record


def _newest(workdir: str, stage: str) -> int | None:
  store = checkpoint.CheckpointStore(workdir, stage, enabled=False)
  try:
    return store.latest_step()
  finally:
    store.close()


def _measure_analogy(config, ae_variables, n: int, seed: int | None,
                     cfg: analogy.ClassifierConfig, cache_dir: str | None, out: str) -> dict:
  """`evaluate_analogies` on `n` test videos; the classifier is copied into `out`."""
  seed = int(config.eval.seed if seed is None else seed)
  cache = os.path.join(cli.cache_dir(), 'analogy') if cache_dir is None else cache_dir
  results = analogy.evaluate_analogies(config, ae_variables, data.make_source(config.data),
                                       n, seed, cache_dir=cache, cfg=cfg, log=log.info)
  shutil.copyfile(analogy.cache_path(cache, config.data, cfg), os.path.join(out,
                                                                            CLASSIFIER_FILE))
  return {'videos': int(n), 'seed': seed, 'classifier': dataclasses.asdict(cfg),
          'classifier_file': CLASSIFIER_FILE,
          'results': {k: v for k, v in results.items() if k not in _TIMES}}


def load(path: str) -> runs.Run:
  """An exported model, ready to use (the same as `mipae_jax.load_run(path)`)."""
  if not exported.is_exported(path):
    exported.read_record(path)  # Raises, naming the missing record.
  return runs.load_run(path)


def recompute_analogy(path: str) -> dict:
  """The analogy accuracy of the exported model at `path`, measured again as at export:
  the same test videos and the shipped classifier. Returns `evaluate_analogies`' results
  without its timings, to compare with `pretrained.json`'s `analogy.results`."""
  run = load(path)
  recorded = exported.read_record(path).get('analogy')
  if not recorded:
    raise errors.DataError(f'{path}/{exported.RECORD_FILE} records no analogy accuracy: '
                           'export the model with --analogy_videos=N to record one.')
  cfg = analogy.ClassifierConfig(**recorded['classifier'])
  shipped = os.path.join(path, recorded['classifier_file'])
  if analogy.load(shipped, run.config.data, cfg) is None:
    raise errors.DataError(f'{shipped} is missing or does not fit the recorded classifier '
                           f'config: export the model again with --analogy_videos.')
  with tempfile.TemporaryDirectory() as cache:
    # The evaluation's own function, reading the shipped classifier as its cache.
    shutil.copyfile(shipped, analogy.cache_path(cache, run.config.data, cfg))
    results = analogy.evaluate_analogies(
        run.config, run.variables['autoencoder'], data.make_source(run.config.data),
        recorded['videos'], recorded['seed'], cache_dir=cache, cfg=cfg)
  return {k: v for k, v in results.items() if k not in _TIMES}


# -------------------------------------------------------------------- The panel.


def duration(seconds: float | None) -> str:
  """`2.3 hours`, `42 minutes`, or 'training time not recorded'."""
  if seconds is None:
    return 'training time not recorded'
  if seconds >= 3600:
    return f'{seconds / 3600:.1f} hours of training'
  return f'{max(seconds / 60, 0.1):.1f} minutes of training'


def label(record: dict) -> str:
  """`100,000 steps, 2.1 hours of training on 2 CPU cores`: the model's steps and time."""
  t = record.get('training') or {}
  lstm = '' if record.get('lstm_step') is None else f' + {record["lstm_step"]:,} LSTM'
  on = f' on {t["machine"]}' if t.get('machine') else ''
  return f'{record["ae_step"]:,} autoencoder{lstm} steps, {duration(t.get("seconds"))}{on}'


def draw_pictures(run: runs.Run, videos: np.ndarray, out_dir: str) -> dict:
  """The report's pictures of a loaded run from test `videos [N, T, H, W, C]`, drawn as
  the evaluation draws its own: `analogy.png`, `reconstruction.png` and, with a pose
  LSTM, `prediction.png` and `prediction.gif`. Returns `{picture: file name}`."""
  os.makedirs(out_dir, exist_ok=True)
  files = {}
  rows = min(6, len(videos))
  content_frames, pose_video = videos[1:rows, 0], videos[0]
  grid = np.asarray(run.analogy(content_frames, pose_video))
  blank = np.zeros_like(content_frames[:1])
  cells = np.concatenate([np.concatenate([blank, pose_video], axis=0)[None],
                          np.concatenate([content_frames[:, None], grid], axis=1)], axis=0)
  visualize.save_image_grid(cells, os.path.join(out_dir, 'analogy.png'))
  files['analogy'] = 'analogy.png'
  rec = np.asarray(run.reconstruct(videos[:rows // 2 or 1]))
  pairs = np.stack([videos[:len(rec)], rec], axis=1).reshape((-1,) + rec.shape[1:])
  visualize.save_filmstrip(pairs, os.path.join(out_dir, 'reconstruction.png'),
                           row_labels=['true', 'recon'] * len(rec))
  files['reconstruction'] = 'reconstruction.png'
  if run.lstm_step is not None:
    c = run.config.data.input_frames
    f = min(run.config.eval.future_frames, videos.shape[1] - c)
    n = min(4, len(videos))
    preds = np.asarray(run.predict(videos[:n, :c], f))
    true = videos[:n, :c + f]
    both = np.stack([true, np.concatenate([videos[:n, :c], preds], axis=1)], axis=1)
    both = both.reshape((-1,) + true.shape[1:])
    visualize.save_filmstrip(both, os.path.join(out_dir, 'prediction.png'),
                             ['true', 'predicted'] * n)
    visualize.save_gif(both, os.path.join(out_dir, 'prediction.gif'), fps=4)
    files['prediction_png'], files['prediction_gif'] = 'prediction.png', 'prediction.gif'
  return files


def _scalar_notes(metrics: dict) -> list[str]:
  return [f'{k} {v:.3f}' if isinstance(v, float) else f'{k} {v}'
          for k, v in sorted(metrics.items())
          if isinstance(v, (int, float, str)) and not isinstance(v, bool)]


def panel_text(record: dict, config, model_dir: str, files: dict, rel: str,
               num_videos: int) -> str:
  """The report's section on the pretrained model (markdown, `PANEL_MARK` first)."""
  d = config.data
  lines = [
      PANEL_MARK,
      f'## The pretrained model ({label(record)})',
      '',
      f'Shipped in `{model_dir}` (`mipae_jax.load_run` reads it; docs/pretrained.md): '
      f'{config.loss.name}, {d.num_objects} object{"s" if d.num_objects > 1 else ""} of '
      f'{d.name}, nf {config.model.nf}, '
      f'batch {config.batch_size}; autoencoder step {record["ae_step"]:,}'
      + ('' if record.get('lstm_step') is None else f', LSTM step {record["lstm_step"]:,}')
      + f', from the run `{record["source"]["workdir"]}`'
      + (f' (`{record["command"]}`)' if record.get('command') else '') + '. '
      f'Drawn here from {num_videos} test videos of its own config (eval.seed '
      f'{config.eval.seed}), not the demo\'s.',
      '',
  ]
  a = record.get('analogy')
  if a:
    r = a['results']
    lines += [f'Analogy accuracy, recorded at export on {a["videos"]} test videos (seed '
              f'{a["seed"]}): **{r["content_accuracy"]:.3f}** (true frames '
              f'{r["ceiling_content_accuracy"]:.3f}, the same as blobs '
              f'{r["blob_content_accuracy"]:.3f}, chance {r["chance_content_accuracy"]:.3f});'
              f' position error {r["position_error_px"]:.2f} px.', '']
  notes = _scalar_notes(record.get('metrics') or {})
  if notes:
    lines += ['Recorded with it: ' + '; '.join(notes) + '.', '']
  for key, title in (('analogy', 'analogies'), ('reconstruction', 'reconstructions'),
                     ('prediction_gif', 'prediction'), ('prediction_png', 'prediction')):
    if key in files:
      lines += [f'![pretrained {title}]({rel}/{files[key]})', '']
  return '\n'.join(lines)


def render_panel(pretrained_dir: str, out_dir: str, report_path: str,
                 num_videos: int = PANEL_VIDEOS) -> str | None:
  """Draws the exported model at `pretrained_dir` into `out_dir` and appends its section
  to `report_path` (replacing an earlier one; the report is created if missing).

  Inference on `num_videos` test videos only: no training, no classifier (the analogy
  accuracy shown is the one recorded at export). Returns the section, or None (and
  prints one line) when `pretrained_dir` does not exist: no model is shipped.
  """
  if not os.path.exists(pretrained_dir):
    print(f'No pretrained model is shipped ({pretrained_dir} does not exist): the report '
          'shows the model trained here only.', flush=True)
    return None
  run = load(pretrained_dir)
  record = exported.read_record(pretrained_dir)
  source = data.make_source(run.config.data)
  videos, _ = source.test_videos(run.config.eval.seed, max(num_videos, 2))
  files = draw_pictures(run, np.asarray(videos, np.float32), out_dir)
  rel = os.path.relpath(out_dir, os.path.dirname(os.path.abspath(report_path)) or '.')
  section = panel_text(record, run.config, pretrained_dir, files, rel.replace(os.sep, '/'),
                       max(num_videos, 2))
  try:
    with open(report_path) as f:
      report = f.read()
  except FileNotFoundError:
    report = ''
  report = report.split(PANEL_MARK)[0].rstrip('\n')
  os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
  workdir_lib.atomic_write_text(report_path, (report + '\n\n' if report else '') + section)
  return section


def main(argv=None) -> int:
  """`python -m mipae_jax.pretrained --workdir=RUN [--model=DIR]`: the pretrained model's
  panel in RUN's report (`RUN/eval/report.md`, pictures in `RUN/eval/pretrained/`)."""
  parser = cli.ArgumentParser(
      prog='python -m mipae_jax.pretrained',
      description='Draw the shipped pretrained model into a run\'s report (make demo).')
  parser.add_argument('--workdir', required=True,
                      help='the run whose eval/report.md gets the section')
  parser.add_argument('--model', default=DEFAULT_DIR,
                      help=f'the exported model (default: {DEFAULT_DIR})')
  parser.add_argument('--videos', type=int, default=PANEL_VIDEOS,
                      help='test videos drawn (default: %(default)s)')
  args = parser.parse_args(argv)
  cli.setup_logging()
  cli.enable_compilation_cache()
  eval_dir = os.path.join(args.workdir, 'eval')
  cli.writes_to(eval_dir)
  section = cli.guarded(render_panel, args.model, os.path.join(eval_dir, 'pretrained'),
                        os.path.join(eval_dir, 'report.md'), args.videos)
  if section is not None:
    print(f'Added the pretrained model ({args.model}) to {eval_dir}/report.md; pictures '
          f'in {eval_dir}/pretrained/.', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
