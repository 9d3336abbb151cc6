"""A seeded comparison of methods: each (method, seed) an ordinary run, then statistics.

`mipae-study` runs every (method, seed) as `mipae-train` in its own workdir
`DIR/{method}-s{seed}` and calls `aggregate(DIR)`, which reads each run's
`eval/metrics.json` and writes

  DIR/results.json  every run's row, per-method means with 95% Student-t intervals over
                    seeds, and each method's paired difference from the baseline (same
                    seed, hence the same data stream) with its interval and seed wins;
  DIR/results.md    the same as tables;
  DIR/*.png         MIG per method (seeds as points, mean and interval), SSIM, PSNR, LPIPS
                    per future step with interval bands, training curves per method.

Runs evaluated on different terms (frames for the MIG, test set, step counts, dataset)
are refused: the estimates depend on them, so their differences would not be the
methods'. So is a run whose recorded method and seed are not those its directory's name
says (a copy of another run), and a folder that holds no study runs at all.

`check_configs` builds each run's config as `mipae-train` will (the config, the study's
overrides, the method and the seed) and validates it, so a bad config is refused once,
before any run starts, instead of failing every run.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence

import numpy as np
from scipy import stats

from mipae_jax import errors

RESULTS_JSON, RESULTS_MD = 'results.json', 'results.md'
TIME_FILE = 'study_time.json'  # Wall seconds a study spent on a run, summed over resumes.
BASELINE = 'drnet'

# (key, label, higher is better): the numbers compared across methods.
METRICS = (
    ('mig', 'MIG (probe)', True),
    ('I_fc_zc', 'I(fc;zc)', True),
    ('I_fc_zp', 'I(fc;zp)', False),
    ('I_fp_zc', 'I(fp;zc)', False),
    ('I_fp_zp', 'I(fp;zp)', True),
    ('paper_mig', 'MIG (paper kNN)', True),
    ('paper_I_fp_zc', 'I(fp;zc) kNN', False),
    ('r2_pose_from_zc', 'R^2 pose from z_c', False),
    ('r2_content_from_zp', 'R^2 content from z_p', False),
    ('classic_mig', 'classic MIG', True),
    ('ssim_mean', 'SSIM (mean over steps)', True),
    ('psnr_mean', 'PSNR (mean over steps)', True),
    ('lpips_mean', 'LPIPS (mean over steps)', False),
    ('fvd', 'FVD', False),
    ('analogy_accuracy', 'analogy accuracy', True),
    ('analogy_position_px', 'analogy position error (px)', False),
)
# Config fields that must agree between runs that are compared.
MUST_AGREE = ('eval.mig_samples', 'eval.seed', 'eval.test_videos', 'eval.future_frames',
              'eval.mig_estimator', 'eval.lpips', 'eval.analogy_videos', 'eval.fvd_videos',
              'eval.fvd_resize', 'train.ae_steps', 'train.lstm_steps', 'data')


# A run's directory: METHOD-sSEED (`run_name`).
RUN_DIR = re.compile(r'^(?P<method>.+)-s(?P<seed>\d+)$')


class StudyError(errors.UserError, ValueError):
  """A study directory, or a run in it, is not what the study needs."""


def run_name(method: str, seed: int) -> str:
  return f'{method}-s{seed}'


def find_runs(study_dir: str) -> list[str]:
  """The study's runs in `study_dir`: directories named METHOD-sSEED holding a
  `config.json` or the study's log of a run that stopped before recording one.

  Raises NotARunError if `study_dir` is not a directory, StudyError if it holds no runs.
  """
  if not os.path.isdir(study_dir):
    raise errors.NotARunError(
        f'study directory {study_dir!r} ' + ('is not a directory' if os.path.exists(
            study_dir) else 'does not exist') + ': pass the --workdir of a study.')
  entries = sorted(os.listdir(study_dir))
  runs = [d for d in entries if RUN_DIR.match(d) and os.path.isdir(os.path.join(
      study_dir, d)) and any(os.path.exists(os.path.join(study_dir, d, f))
                             for f in ('config.json', 'study.log'))]
  if not runs:
    shown = ', '.join(entries[:5]) + (f' and {len(entries) - 5} more' if len(entries) > 5
                                      else '')
    raise StudyError(
        f'{study_dir} holds no study runs (directories named METHOD-sSEED with a '
        f'config.json, as mipae-study makes them); it holds '
        f'{shown or "nothing"}. Pass the --workdir of a study.')
  return runs


def check_identity(study_dir: str, runs: Sequence[str]) -> None:
  """Refuses a run whose recorded `loss.name` and `seed` are not those its directory's
  name says: the study reports each run as the method and seed of its name."""
  for run in runs:
    try:
      with open(os.path.join(study_dir, run, 'config.json')) as f:
        config = json.load(f)
      method, seed = config['loss']['name'], config['seed']
    except (OSError, ValueError, KeyError, TypeError):
      continue  # Not recorded yet, or damaged: reported as not finished.
    if run != run_name(method, seed):
      raise StudyError(
          f'{os.path.join(study_dir, run)} holds a run of {method} with seed {seed} (its '
          f'config.json records loss.name={method!r}, seed={seed}), not the one its name '
          f'says: the study reports each run as the method and seed of its directory '
          f'name. Rename it to {run_name(method, seed)} if that is what it is, or remove '
          f'it (the study then trains {run} there).')


def requested_config(config_spec: str, overrides: Sequence[str], method: str, seed: int):
  """The config `mipae-train --config=SPEC --config.loss.name=METHOD --config.seed=SEED
  OVERRIDES` runs with (overrides are `--config.FIELD=VALUE`); ConfigError if one names
  no field or has a value of the wrong type."""
  from mipae_jax import cli
  config = cli.load_config_file(config_spec)
  for override in (f'--config.loss.name={method}', f'--config.seed={seed}', *overrides):
    field, sep, text = override[len('--config.'):].partition('=')
    current = cli.field_value(config, field)
    if hasattr(current, 'keys'):
      raise errors.ConfigError(f'{override}: config.{field} is a group of fields; '
                               f'override one of them ({", ".join(sorted(current))}).')
    if sep:
      value = cli.parse_value(f'--config.{field}', text, current)
    elif isinstance(current, bool):
      value = True  # As absl reads a bare boolean flag.
    else:
      raise errors.ConfigError(f'{override}: expected --config.{field}=VALUE.')
    parent, _, last = field.rpartition('.')
    node = cli.field_value(config, parent) if parent else config
    try:
      node[last] = value
    except (TypeError, ValueError) as e:
      raise errors.ConfigError(f'{override}: {errors.first_line(str(e))}') from None
  return config


def check_configs(config_spec: str, overrides: Sequence[str], methods: Sequence[str],
                  seed: int) -> None:
  """Validates each method's run config (`requested_config`, with `seed`: seeds differ
  only in a number) as the runs will; ConfigError (DataNotFoundError for missing data)
  naming the method, before any run starts."""
  from mipae_jax import configuration
  for method in methods:
    try:
      configuration.validate(requested_config(config_spec, overrides, method, seed))
    except (errors.UserError, ValueError, TypeError) as e:
      raise errors.ConfigError(
          f'the runs of {method} would fail (--config={config_spec} with '
          f'loss.name={method!r}, seed={seed}{" and the overrides" if overrides else ""}): '
          f'{errors.first_line(str(e), 400)} No run was started.') from e


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
  """(mean, half-width) of the Student-t interval of the mean; half-width NaN for n < 2."""
  v = np.asarray(values, np.float64)
  n = len(v)
  if n < 2:
    return float(v.mean()) if n else math.nan, math.nan
  half = stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
  return float(v.mean()), float(half)


def _get(config: dict, dotted: str):
  v = config
  for part in dotted.split('.'):
    v = v.get(part) if isinstance(v, dict) else None
  return v


def is_complete(run_dir: str) -> bool:
  """The run trained every step its config asks for and was evaluated after that."""
  try:
    with open(os.path.join(run_dir, 'config.json')) as f:
      config = json.load(f)
    with open(os.path.join(run_dir, 'eval', 'metrics.json')) as f:
      m = json.load(f)
  except (OSError, ValueError):
    return False
  lstm = config['train']['lstm_steps']
  return m.get('ae_step') == config['train']['ae_steps'] and (
      m.get('lstm_step') == lstm or (lstm == 0 and m.get('lstm_step') is None))


def run_config(run_dir: str) -> dict:
  """A run's recorded config, with the fields added since it was recorded at the values
  it ran with (`config_record.load_config`), so old and new runs compare field by field."""
  from mipae_jax import config_record
  return config_record.load_config(run_dir).to_dict()


def run_row(run_dir: str) -> dict:
  """One run's numbers (see METRICS) and identity, from its workdir."""
  config = run_config(run_dir)
  with open(os.path.join(run_dir, 'eval', 'metrics.json')) as f:
    m = json.load(f)
  mg = m['mig']
  head = mg[mg.get('estimator', 'paper')]
  row = {'run': os.path.basename(run_dir), 'method': config['loss']['name'],
         'seed': config['seed'], 'ae_step': m['ae_step'], 'lstm_step': m['lstm_step'],
         **{k: head[k] for k in ('mig', 'I_fc_zc', 'I_fc_zp', 'I_fp_zc', 'I_fp_zp')},
         'estimator': mg.get('estimator', 'paper'), 'classic_mig': mg['classic']['mig']}
  if 'paper' in mg:
    row.update(paper_mig=mg['paper']['mig'], paper_I_fp_zc=mg['paper']['I_fp_zc'],
               paper={k: mg['paper'][k] for k in ('I_fc_zc', 'I_fc_zp', 'I_fp_zc',
                                                  'I_fp_zp', 'mig')})
  if 'linear_r2' in mg:
    row.update(r2_pose_from_zc=mg['linear_r2']['pose_from_zc'],
               r2_content_from_zp=mg['linear_r2']['content_from_zp'])
  if 'prediction' in m:
    p = m['prediction']
    row.update(ssim=p['ssim_mean'], psnr=p['psnr_mean'],
               ssim_mean=float(np.mean(p['ssim_mean'])),
               psnr_mean=float(np.mean(p['psnr_mean'])))
    if 'lpips_mean' in p:
      row.update(lpips=p['lpips_mean'], lpips_mean=float(np.mean(p['lpips_mean'])))
    if 'fvd' in p:
      row['fvd'] = p['fvd']
  if 'analogy' in m:
    row.update(analogy_accuracy=m['analogy']['content_accuracy'],
               analogy_position_px=m['analogy']['position_error_px'])
  try:
    with open(os.path.join(run_dir, TIME_FILE)) as f:
      row['wall_seconds'] = json.load(f)['seconds']
  except (OSError, ValueError, KeyError):
    t = m.get('timings', {})
    row['wall_seconds'] = sum(s.get('seconds', 0.0) for s in t.values())
  row['config'] = config
  return row


def check_comparable(rows: Sequence[dict]) -> None:
  """Raises ValueError naming the runs and fields that differ in `MUST_AGREE`."""
  if not rows:
    raise ValueError('no finished runs to aggregate')
  problems = []
  for field in MUST_AGREE:
    values = {r['run']: json.dumps(_get(r['config'], field), sort_keys=True) for r in rows}
    if len(set(values.values())) > 1:
      first = values[rows[0]['run']]
      # A whole config.data section is too long to print: name the runs that differ.
      shown = (', '.join(f'{run}: {v}' for run, v in values.items()) if field != 'data'
               else ', '.join(run for run, v in values.items() if v != first))
      problems.append(f'config.{field} differs ({shown})')
  if problems:
    raise ValueError('refusing to aggregate runs evaluated on different terms (the '
                     'estimates depend on them): ' + '; '.join(problems)
                     + '. Rerun or re-evaluate them with one setting (mipae-evaluate '
                     '--override=eval.FIELD=VALUE for eval.* fields).')


def summarise(rows: Sequence[dict], baseline: str = BASELINE) -> dict:
  """Per-method intervals and paired differences from `baseline` (see the module doc)."""
  methods = sorted({r['method'] for r in rows}, key=lambda m: (m == baseline, m))
  by = {m: {r['seed']: r for r in rows if r['method'] == m} for m in methods}
  out = {'methods': {}, 'paired': {}}
  for m in methods:
    seeds = sorted(by[m])
    entry = {'seeds': seeds}
    for key, _, _ in METRICS:
      vals = [by[m][s][key] for s in seeds if key in by[m][s]]
      if vals:
        mean, half = t_interval(vals)
        entry[key] = {'mean': mean, 'ci95': half, 'values': vals}
    for curve in ('ssim', 'psnr', 'lpips'):
      vals = [by[m][s][curve] for s in seeds if curve in by[m][s]]
      if vals:
        arr = np.asarray(vals, np.float64)
        entry[curve] = {'mean': arr.mean(0).tolist(),
                        'ci95': [t_interval(arr[:, i])[1] for i in range(arr.shape[1])]}
    out['methods'][m] = entry
  if baseline in by:
    for m in methods:
      if m == baseline:
        continue
      seeds = sorted(set(by[m]) & set(by[baseline]))
      pair = {'seeds': seeds}
      for key, _, higher in METRICS:
        d = [by[m][s][key] - by[baseline][s][key] for s in seeds
             if key in by[m][s] and key in by[baseline][s]]
        if d:
          mean, half = t_interval(d)
          wins = sum((x > 0) if higher else (x < 0) for x in d)
          pair[key] = {'mean': mean, 'ci95': half, 'values': d, 'wins': int(wins),
                       'n': len(d), 'higher_is_better': higher}
      out['paired'][f'{m}-{baseline}'] = pair
  return out


def _fmt(mean, half, digits=4):
  if mean is None or (isinstance(mean, float) and math.isnan(mean)):
    return 'n/a'
  return f'{mean:.{digits}f}' + ('' if math.isnan(half) else f' ± {half:.{digits}f}')


def render_markdown(rows: Sequence[dict], summary: dict) -> str:
  """results.md: per-run rows, per-method intervals, paired differences."""
  lines = ['# Study results', '',
           'Per run (nats; MIG and MIs under the headline estimator named in each row):', '',
           '| run | estimator | I(fc;zc) | I(fc;zp) | I(fp;zc) | I(fp;zp) | MIG | MIG kNN | '
           'R^2 pose<-zc | classic MIG | SSIM | PSNR | steps (AE/LSTM) | wall s |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in sorted(rows, key=lambda r: (r['method'], r['seed'])):
    lines.append(
        f'| {r["run"]} | {r["estimator"]} | {r["I_fc_zc"]:.4f} | {r["I_fc_zp"]:.4f} | '
        f'{r["I_fp_zc"]:.4f} | {r["I_fp_zp"]:.4f} | {r["mig"]:.4f} | '
        f'{r.get("paper_mig", math.nan):.4f} | {r.get("r2_pose_from_zc", math.nan):.3f} | '
        f'{r["classic_mig"]:.4f} | {r.get("ssim_mean", math.nan):.4f} | '
        f'{r.get("psnr_mean", math.nan):.2f} | {r["ae_step"]}/{r["lstm_step"]} | '
        f'{r.get("wall_seconds", math.nan):.0f} |')
  lines += ['', 'Per method: mean ± 95% Student-t half-width over seeds.', '',
            '| metric | ' + ' | '.join(f'{m} (n={len(e["seeds"])})'
                                       for m, e in summary['methods'].items()) + ' |',
            '|---|' + '---|' * len(summary['methods'])]
  for key, label, _ in METRICS:
    cells = [_fmt(e[key]['mean'], e[key]['ci95']) if key in e else 'n/a'
             for e in summary['methods'].values()]
    lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  for name, pair in summary['paired'].items():
    lines += ['', f'Paired difference {name} (same seeds {pair["seeds"]}, same data stream): '
              'mean ± 95% half-width, and seeds on which the first method is better.', '',
              '| metric | difference | better on |', '|---|---|---|']
    for key, label, higher in METRICS:
      if key in pair:
        p = pair[key]
        lines.append(f'| {label} ({"higher" if higher else "lower"} is better) | '
                     f'{_fmt(p["mean"], p["ci95"])} | {p["wins"]} of {p["n"]} |')
  return '\n'.join(lines) + '\n'


def _curves(run_dir: str) -> dict:
  """{'step': [...], 'recon_loss': [...], 'critic_mi': [...]} of the AE stage."""
  out = {'step': [], 'recon_loss': [], 'critic_mi': []}
  try:
    with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
      for line in f:
        try:
          rec = json.loads(line)
        except ValueError:
          continue  # A line cut short by a kill.
        if rec.get('stage') == 'ae' and 'recon_loss' in rec:
          out['step'].append(rec['step'])
          out['recon_loss'].append(rec['recon_loss'])
          out['critic_mi'].append(rec.get('critic_mi', math.nan))
  except OSError:
    pass
  return out


def write_pictures(study_dir: str, rows: Sequence[dict], summary: dict) -> list[str]:
  """MIG per method, SSIM/PSNR per step with bands, training curves. Returns file names."""
  from mipae_jax import visualize
  files = []
  methods = list(summary['methods'])
  fig = visualize.figure(figsize=(1.6 + 1.2 * len(methods), 3.5), dpi=100)
  ax = fig.subplots()
  for i, m in enumerate(methods):
    e = summary['methods'][m]
    for key, dx, marker in (('mig', -0.12, 'o'), ('paper_mig', 0.12, 's')):
      if key in e:
        vals = e[key]['values']
        ax.scatter(np.full(len(vals), i + dx), vals, marker=marker, alpha=0.6,
                   color='C0' if key == 'mig' else 'C1',
                   label=('probe' if key == 'mig' else 'paper kNN') if i == 0 else None)
        half = e[key]['ci95']
        ax.errorbar(i + dx + 0.06, e[key]['mean'], yerr=None if math.isnan(half) else half,
                    fmt='_', color='k', capsize=4)
  ax.set_xticks(range(len(methods)), methods)
  ax.set_ylabel('MIG')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(study_dir, 'mig.png'))
  files.append('mig.png')
  for curve, label in (('ssim', 'SSIM'), ('psnr', 'PSNR (dB)'),
                       ('lpips', 'LPIPS (lower is better)')):
    curves = {m: (e[curve]['mean'], np.nan_to_num(e[curve]['ci95']))
              for m, e in summary['methods'].items() if curve in e}
    if curves:
      visualize.plot_per_step(curves, os.path.join(study_dir, f'{curve}.png'), label)
      files.append(f'{curve}.png')
  fig = visualize.figure(figsize=(9, 3.5), dpi=100)
  axes = fig.subplots(1, 2)
  for i, m in enumerate(methods):
    for r in (r for r in rows if r['method'] == m):
      c = _curves(os.path.join(study_dir, r['run']))
      for ax, key in zip(axes, ('recon_loss', 'critic_mi'), strict=True):
        ax.plot(c['step'], c[key], color=f'C{i}', alpha=0.7,
                label=m if r['seed'] == summary['methods'][m]['seeds'][0] else None)
  for ax, title in zip(axes, ('reconstruction loss', "critic's MI estimate"), strict=True):
    ax.set_xlabel('autoencoder step')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
  axes[0].set_yscale('log')
  fig.tight_layout()
  fig.savefig(os.path.join(study_dir, 'training.png'))
  files.append('training.png')
  return files


def aggregate(study_dir: str, runs: Sequence[str] | None = None,
              baseline: str = BASELINE) -> dict:
  """Reads the finished runs (`find_runs`, or `runs`), writes the results files.

  Raises, naming what is wrong: NotARunError (a `UserError`) for a directory that does
  not exist; a ValueError for the rest: no runs in it or a run that is not the one its
  name says (StudyError, a `UserError`), runs not finished, runs evaluated on different
  terms.
  """
  if runs is None:
    runs = find_runs(study_dir)
  elif not os.path.isdir(study_dir):
    find_runs(study_dir)  # Raises, naming it.
  check_identity(study_dir, runs)
  missing = [r for r in runs if not is_complete(os.path.join(study_dir, r))]
  if missing:
    raise ValueError(f'runs not finished: {", ".join(missing)}. Run the study command '
                     'again to finish them (each resumes where it stopped).')
  rows = [run_row(os.path.join(study_dir, r)) for r in runs]
  check_comparable(rows)
  summary = summarise(rows, baseline)
  files = write_pictures(study_dir, rows, summary)
  results = {'runs': [{k: v for k, v in r.items() if k != 'config'} for r in rows],
             **summary, 'pictures': files,
             'protocol': {f: _get(rows[0]['config'], f) for f in MUST_AGREE if f != 'data'}}
  with open(os.path.join(study_dir, RESULTS_JSON), 'w') as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(study_dir, RESULTS_MD), 'w') as f:
    f.write(render_markdown(rows, summary))
    f.write('\n' + '\n'.join(f'![{p}]({p})' for p in files) + '\n')
  return results
