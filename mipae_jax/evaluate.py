"""Evaluation of a trained run: disentanglement (MIG), prediction quality, pictures.

`evaluate(config, workdir, ae_state, lstm_state)` writes into `workdir/eval/`:
  metrics.json        every number (MIGs, per-step SSIM/PSNR with 95% intervals, the
                      training stages' and this evaluation's timings)
  report.md           the paper's Table 1 row for this run, plots and pictures
  analogy.png         content of row videos x poses of the top video
  reconstruction.png  true frames over reconstructions
  prediction.gif/png  true vs predicted future frames (when the LSTM was trained)
  ssim.png, psnr.png  per future step, with 95% bands
All evaluation data is drawn from `config.eval.seed`, so every run of every model is
scored on the same frames and videos.
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import numpy as np
from PIL import Image

from mipae_jax import (
  cli,
  compiler,
  config_record,
  configuration,
  data,
  errors,
  logger,
  models,
  predict,
  runs,
  train,
  visualize,
)
from mipae_jax.logger import MetricLogger
from mipae_jax.metrics import image as image_metrics
from mipae_jax.metrics import knn, probe
from mipae_jax.metrics import mig as mig_metrics

ENCODE_BATCH = 500
# A held-out R^2 above this is bold as linear leakage in the report. A latent without the
# factor scores about 0, below it when the least-squares map overfits its train part (the
# map is then worse than the mean), so 0 or less is no linear leakage at all; the margin
# keeps a chance fit of a few hundredths from reading as leakage.
LEAKAGE_R2 = 0.1

log = logging.getLogger(__name__)


def encode_static(config, ae_variables, source, n: int, seed: int):
  """Latents and factors of `n` single test frames, sampled uniformly over all factors.

  Returns (z_c [n, Dc], z_p [n, Dp], content [n, Kc], pose [n, Kp]) as numpy.
  """
  nets = models.networks(config)
  encode = compiler.jit(lambda v, x: predict.encode_frames(nets, v, x))
  z_c, z_p, content, pose = [], [], [], []
  for images, c, p in source.iter_static(seed, n, chunk=10_000, split='test'):
    for s in range(0, len(images), ENCODE_BATCH):
      x = images[s:s + ENCODE_BATCH]
      valid = len(x)
      if valid < ENCODE_BATCH and n > ENCODE_BATCH:  # Pad the last batch: one shape.
        x = np.concatenate([x, np.zeros((ENCODE_BATCH - valid,) + x.shape[1:], x.dtype)])
      zc, zp = jax.device_get(encode(ae_variables, x))
      z_c.append(zc[:valid])
      z_p.append(zp[:valid])
    content.append(np.asarray(c))
    pose.append(np.asarray(p))
  return (np.concatenate(z_c), np.concatenate(z_p), np.concatenate(content),
          np.concatenate(pose))


def factor_groups(source, content, pose):
  """The source's factor groups of its test frames, or groups inferred from the labels."""
  groups = source.factor_groups('test')
  if groups is None:
    return (probe.default_groups(content, source.content_factor_names),
            probe.default_groups(pose, source.pose_factor_names, ordinal=True))
  return groups['content'], groups['pose']


def disentanglement(config, ae_variables, source) -> dict:
  """The paper's signed MIG (eq. 8) under the probe and the kNN estimators, the linear
  read-outs (R^2) across the split, and the classic per-dimension MIG.

  `config.eval.mig_estimator` names the headline ('probe' or 'paper'); with
  `config.eval.paper_protocol` both are computed (the kNN modes come from
  `config.eval.knn_content_mode` / `knn_pose_mode`, never from the sample size).
  """
  t0 = time.time()
  small = sample_size_warning(config.eval.mig_samples)
  if small:
    log.warning('%s', small['message'])
  z_c, z_p, content, pose = encode_static(config, ae_variables, source,
                                          config.eval.mig_samples, config.eval.seed)
  content_groups, pose_groups = factor_groups(source, content, pose)
  estimator = config.eval.mig_estimator
  out = {'estimator': estimator, 'n_samples': int(len(z_c)),
         'content_factors': list(source.content_factor_names),
         'pose_factors': list(source.pose_factor_names)}
  out['probe'] = mig_metrics.probe_mig(z_c, z_p, content, pose, content_groups, pose_groups)
  if estimator == 'paper' or config.eval.paper_protocol:
    for field, f in (('knn_content_mode', content), ('knn_pose_mode', pose)):
      once = int(np.sum(knn.joint_labels(f)[1] == 1))
      if config.eval[field] == 'discrete' and once:
        raise ValueError(
            f'config.eval.{field}=discrete (Ross) needs every joint label at least twice, '
            f'but {once} of the {len(f)} frames hold a label that occurs once. Set '
            f"config.eval.{field}='continuous' (KSG), or raise eval.mig_samples.")
    out['paper'] = mig_metrics.paper_mig(
        z_c, z_p, content, pose, k=3, content_mode=config.eval.knn_content_mode,
        pose_mode=config.eval.knn_pose_mode)
  pose_targets = pose[:, [c for g in pose_groups for c in g.columns]]
  content_targets = probe.one_hot_groups(content, content_groups)
  out['linear_r2'] = {
      'pose_from_zc': probe.linear_r2(z_c, pose_targets),
      'pose_from_zp': probe.linear_r2(z_p, pose_targets),
      'content_from_zp': probe.linear_r2(z_p, content_targets),
      'content_from_zc': probe.linear_r2(z_c, content_targets),
  }
  out['classic'] = _jsonable(mig_metrics.classic_mig_details(
      np.concatenate([z_c, z_p], axis=1), np.concatenate([content, pose], axis=1)))
  out['seconds'] = time.time() - t0
  return out


def sample_size_warning(n: int) -> dict | None:
  """What to say of MIs estimated from `n` frames below `probe.MIN_STABLE_SAMPLES`, or
  None. Returns {'kind': 'mig_samples', 'n_samples', 'threshold', 'message'}."""
  least = probe.MIN_STABLE_SAMPLES
  if n >= least:
    return None
  cfg = probe.DEFAULT
  held_out = n - int(round(n * cfg.train_fraction)) - int(round(n * cfg.val_fraction))
  return {'kind': 'mig_samples', 'n_samples': int(n), 'threshold': least, 'message': (
      f'eval.mig_samples = {n:,} is below {least:,} frames, the fewest at which the probe '
      f'estimator is validated (its self-check, metrics.validation, finds every '
      f'known-answer MIG within 0.05 at {least:,} frames and within 0.05 of itself at '
      f'{2 * least:,}). At {n:,} frames ({least / n:.3g}x fewer; each probe is scored on '
      f'{held_out:,} held-out frames) the MIs and the MIG are not stable (they move with '
      f'eval.seed) and not comparable with runs at other sizes. Raise eval.mig_samples '
      f'to {least:,} or more.')}


def training_warnings(workdir: str) -> list[dict]:
  """The training stages whose gradients were exactly 0 over a whole log interval, as
  recorded in `workdir/metrics.jsonl` (`logger.zero_gradient_flags`): one entry per
  stage, {'kind': 'zero_gradients', 'stage', 'from_step', 'to_step', 'intervals',
  'norms', 'trained_before', 'message'}."""
  try:
    records = logger.read_records(workdir)
  except (OSError, ValueError):  # No run records (a bare checkpoint), or unreadable.
    return []
  out = []
  for stage, flag in logger.zero_gradient_flags(records).items():
    out.append({'kind': 'zero_gradients', 'stage': stage, **flag, 'message': (
        f'the {stage} stage\'s gradients were zero from step {flag["from_step"]} '
        f'({", ".join(flag["norms"])} exactly 0 at every step of {flag["intervals"]} log '
        f'interval(s), the last ending at step {flag["to_step"]}), so its results are not '
        f'meaningful: {logger.zero_gradient_cause(stage, flag["trained_before"])}.')})
  return out


def headline(results: dict) -> dict:
  """The MIG result the run's config names (`results['mig'][estimator]`)."""
  return results['mig'][results['mig'].get('estimator', 'paper')]


def prediction_videos(config, source) -> tuple[np.ndarray, str]:
  """The test videos prediction is scored on `[N, T, H, W, C]`, and what they are.

  `config.eval.test_seq` (a Moving MNIST run): the first `eval.test_videos` sequences of
  the standard test set `mnist_test_seq.npy` (Srivastava et al. 2015; 10,000 sequences of
  20 frames), in their published order. Otherwise `eval.test_videos` videos of the
  dataset's test split, fixed by `eval.seed`.
  """
  path = config.eval.test_seq
  if path:
    from mipae_jax.data import moving_mnist
    seq = moving_mnist.load_test_seq(path)
    n = min(config.eval.test_videos, seq.shape[1])
    frames = config.data.input_frames + config.eval.future_frames
    videos = moving_mnist.test_seq_videos(seq, 0, n, config.data.image_size)[:, :frames]
    return videos, (f'the standard Moving MNIST test set ({os.path.basename(path)}): '
                    f'sequences 0-{n - 1} of {seq.shape[1]}, frames 0-'
                    f'{config.data.input_frames - 1} as context, the next '
                    f'{config.eval.future_frames} scored')
  videos, _ = source.test_videos(config.eval.seed, config.eval.test_videos)
  return (np.asarray(videos, np.float32),
          f'{len(videos)} test-split videos fixed by eval.seed={config.eval.seed}')


def prediction_quality(config, ae_variables, lstm_params, videos) -> tuple[dict, np.ndarray]:
  """Per-future-step SSIM/PSNR of LSTM predictions on fixed test `videos [N, T, ...]`.

  Returns (metrics, predicted frames [N, F, H, W, C]).
  """
  c, f = config.data.input_frames, config.eval.future_frames
  predictor = predict.make_predictor(models.networks(config), f)
  batch = min(100, len(videos))
  preds = []
  for s in range(0, len(videos), batch):
    ctx = videos[s:s + batch, :c]
    pad = batch - len(ctx)
    if pad:
      ctx = np.concatenate([ctx, np.zeros((pad,) + ctx.shape[1:], ctx.dtype)])
    out = np.asarray(predictor(ae_variables, lstm_params, ctx)['frames'])
    preds.append(out[:batch - pad])
  preds = np.concatenate(preds)
  scores = image_metrics.per_step_metrics(preds, videos[:, c:c + f])
  keep = ('ssim_mean', 'ssim_ci95', 'psnr_mean', 'psnr_ci95', 'n_videos', 'protocol')
  out = {k: _jsonable(scores[k]) for k in keep}
  out.update(lpips_per_step(config.eval.get('lpips', ''), preds, videos[:, c:c + f]))
  out.update(fvd_score(config.eval.get('fvd_videos', 0), videos[:, :c + f], preds,
                       config.eval.get('fvd_resize', 'tf1')))
  return out, preds


def lpips_per_step(net: str, pred, true, batch: int = 50) -> dict:
  """LPIPS of every predicted frame, mean and 95% interval over videos per step.

  Args:
    net: 'alex' or 'vgg' ('': none).
    pred, true: videos `[N, F, H, W, C]` in [0, 1].
  Returns:
    `{'lpips_mean': [F], 'lpips_ci95': [F], 'lpips_net', 'lpips_protocol'}`, or
    `{'lpips_skipped': reason}` when the weights are not installed, or {} when off.
  """
  if not net:
    return {}
  from mipae_jax.metrics import lpips

  try:
    params = lpips.load_weights(net)
  except lpips.WeightsNotFoundError as e:
    log.warning('LPIPS skipped: %s', e)
    return {'lpips_skipped': str(e)}
  n = len(pred)
  scores = np.concatenate([np.asarray(lpips.lpips(params, pred[s:s + batch], true[s:s + batch]))
                           for s in range(0, n, batch)]).astype(np.float64)  # [N, F]
  ci95 = (1.96 * scores.std(axis=0, ddof=1) / np.sqrt(n) if n > 1
          else np.zeros(scores.shape[1]))
  return {'lpips_mean': scores.mean(0).tolist(), 'lpips_ci95': ci95.tolist(),
          'lpips_net': net, 'lpips_protocol': lpips.PROTOCOL}


def fvd_score(n: int, true, pred, resize: str = 'tf1') -> dict:
  """FVD of the first `n` test videos as predicted against the same videos as they are:
  clips of the context and the predicted frames against clips of the context and the true
  frames (as SRVP scores it), so both sets hold the same conditioning frames.

  Args:
    n: clips (`eval.fvd_videos`; 0: off); at most the videos given are used.
    true: test videos `[N, C + F, H, W, Ch]` in [0, 1], context then true future.
    pred: predicted future frames `[N, F, H, W, Ch]`.
    resize: 'tf1' (the original FVD's) or 'half_pixel'.
  Returns:
    `{'fvd', 'fvd_videos', 'fvd_frames', 'fvd_resize', 'fvd_protocol', 'fvd_seconds'}`, or
    `{'fvd_skipped': reason}` when the weights are not installed, or {} when off.
  """
  if not n:
    return {}
  from mipae_jax.metrics import fvd

  try:
    params = fvd.load_weights()
  except fvd.WeightsNotFoundError as e:
    log.warning('FVD skipped: %s', e)
    return {'fvd_skipped': str(e)}
  t0 = time.time()
  real = np.asarray(true[:n])
  context = real.shape[1] - pred.shape[1]
  fake = np.concatenate([real[:, :context], np.asarray(pred[:n])], axis=1)
  log.info('FVD: I3D on 2 x %d clips of %d frames', len(real), real.shape[1])
  value = fvd.fvd(params, real, fake, resize)
  return {'fvd': value, 'fvd_videos': int(len(real)), 'fvd_frames': int(real.shape[1]),
          'fvd_resize': resize, 'fvd_protocol': fvd.protocol(resize),
          'fvd_seconds': round(time.time() - t0, 2)}


def write_pictures(config, ae_variables, lstm_params, videos, preds, out_dir: str) -> dict:
  """Analogy grid, reconstructions and (with an LSTM) predictions; returns file names."""
  files = {}
  nets = models.networks(config)
  rows = min(6, len(videos))
  # Analogy: content of frame 0 of videos 1..rows-1, poses of video 0.
  content_frames, pose_video = videos[1:rows, 0], videos[0]
  grid = np.asarray(compiler.jit(lambda v, a, b: predict.analogies(nets, v, a, b))(
      ae_variables, content_frames, pose_video))
  blank = np.zeros_like(content_frames[:1])
  cells = np.concatenate([
      np.concatenate([blank, pose_video], axis=0)[None],
      np.concatenate([content_frames[:, None], grid], axis=1)], axis=0)
  visualize.save_image_grid(cells, os.path.join(out_dir, 'analogy.png'))
  files['analogy'] = 'analogy.png'

  rec = np.asarray(compiler.jit(lambda v, x: predict.reconstruct(nets, v, x))(
      ae_variables, videos[:rows // 2 or 1]))
  pairs = np.stack([videos[:len(rec)], rec], axis=1).reshape((-1,) + rec.shape[1:])
  visualize.save_filmstrip(pairs, os.path.join(out_dir, 'reconstruction.png'),
                           row_labels=['true', 'recon'] * len(rec))
  files['reconstruction'] = 'reconstruction.png'

  if preds is not None:
    c, f = config.data.input_frames, preds.shape[1]
    n = min(4, len(preds))
    true = videos[:n, :c + f]
    pred = np.concatenate([videos[:n, :c], preds[:n]], axis=1)
    both = np.stack([true, pred], axis=1).reshape((-1,) + true.shape[1:])
    labels = ['true', 'predicted'] * n
    visualize.save_filmstrip(both, os.path.join(out_dir, 'prediction.png'), labels)
    visualize.save_gif(both, os.path.join(out_dir, 'prediction.gif'), fps=4)
    files['prediction_png'], files['prediction_gif'] = 'prediction.png', 'prediction.gif'
  return files


def evaluate(config, workdir: str, ae_state: train.AEState, lstm_state=None, source=None,
             timings: dict | None = None) -> dict:
  """Scores a run and writes `workdir/eval/` (see the module docstring).

  `timings`: the training stages' `{stage: {'seconds': ..., ...}}`, recorded in
  metrics.json beside this evaluation's own `{'eval': {'seconds': ...}}`.
  """
  t0 = time.time()
  out_dir = os.path.join(workdir, 'eval')
  os.makedirs(out_dir, exist_ok=True)
  source = data.make_source(config.data) if source is None else source
  ae_variables = train.autoencoder_variables(ae_state)
  lstm_params = None if lstm_state is None else lstm_state.lstm.params
  results = {'dataset': config.data.name, 'loss': config.loss.name,
             'ae_step': int(ae_state.step),
             'lstm_step': None if lstm_state is None else int(lstm_state.step),
             'timings': {k: v for k, v in (timings or {}).items() if k != 'eval'}}
  results['mig'] = disentanglement(config, ae_variables, source)
  small = sample_size_warning(results['mig']['n_samples'])
  results['warnings'] = training_warnings(workdir) + ([small] if small else [])
  if config.eval.get('analogy_videos', 0):
    from mipae_jax.metrics import analogy
    results['analogy'] = analogy.evaluate_analogies(
        config, ae_variables, source, config.eval.analogy_videos, config.eval.seed,
        cache_dir=os.path.join(cli.cache_dir(), 'analogy'), log=log.info)
  videos, test_set = prediction_videos(config, source)
  preds = None
  if lstm_params is not None:
    results['prediction'], preds = prediction_quality(config, ae_variables, lstm_params,
                                                      videos)
    results['prediction']['test_set'] = test_set
    p = results['prediction']
    visualize.plot_per_step({config.loss.name: (p['ssim_mean'], p['ssim_ci95'])},
                            os.path.join(out_dir, 'ssim.png'), 'SSIM')
    visualize.plot_per_step({config.loss.name: (p['psnr_mean'], p['psnr_ci95'])},
                            os.path.join(out_dir, 'psnr.png'), 'PSNR (dB)')
  results['files'] = write_pictures(config, ae_variables, lstm_params, videos, preds, out_dir)
  results['timings']['eval'] = {'seconds': round(time.time() - t0, 2)}
  with open(os.path.join(out_dir, 'metrics.json'), 'w') as fh:
    json.dump(_jsonable(results), fh, indent=2)
  with open(os.path.join(out_dir, 'report.md'), 'w') as fh:
    fh.write(render_report(config, results))
  log_to_tensorboard(workdir, results)
  return results


def log_to_tensorboard(workdir: str, results: dict) -> None:
  """Headline numbers as scalars and the PNG pictures as image grids, stage 'eval'."""
  m = headline(results)
  scalars = {k: m[k] for k in ('mig', 'I_fc_zc', 'I_fc_zp', 'I_fp_zc', 'I_fp_zp')}
  if 'paper' in results['mig'] and results['mig']['estimator'] != 'paper':
    scalars['paper_mig'] = results['mig']['paper']['mig']
  scalars['linear_r2_pose_from_zc'] = results['mig']['linear_r2']['pose_from_zc']
  scalars['classic_mig'] = results['mig']['classic']['mig']
  if 'prediction' in results:
    scalars['ssim_mean'] = float(np.mean(results['prediction']['ssim_mean']))
    scalars['psnr_mean'] = float(np.mean(results['prediction']['psnr_mean']))
    if 'lpips_mean' in results['prediction']:
      scalars['lpips_mean'] = float(np.mean(results['prediction']['lpips_mean']))
    if 'fvd' in results['prediction']:
      scalars['fvd'] = results['prediction']['fvd']
  if 'analogy' in results:
    scalars['analogy_content_accuracy'] = results['analogy']['content_accuracy']
  out_dir = os.path.join(workdir, 'eval')
  images = {name: np.asarray(Image.open(os.path.join(out_dir, f)).convert('RGB'))
            for name, f in results['files'].items() if f.endswith('.png')}
  with MetricLogger(workdir, stage='eval') as tb:
    tb.write_scalars(results['ae_step'], scalars)
    tb.write_images(results['ae_step'], images)


def recorded_timings(workdir: str) -> dict:
  """The training stages' timings an earlier evaluation of `workdir` wrote into
  `eval/metrics.json` (`{stage: {...}}`, its own 'eval' entry left out), or {}.

  Only the training run knows how long its stages took; a re-evaluation carries them on.
  """
  try:
    with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
      timings = json.load(f).get('timings') or {}
  except (OSError, ValueError, AttributeError):  # None yet, unreadable, or not an object.
    return {}
  if not isinstance(timings, dict):
    return {}
  return {k: v for k, v in timings.items() if k != 'eval'}


def _leakage_r2(value: float) -> str:
  """An R^2 read-out of a factor from the latent that should not hold it, bold (and
  called leakage) only above `LEAKAGE_R2`."""
  if value > LEAKAGE_R2:
    return f'**{value:.3f}** (leakage)'
  return f'{value:.3f} (no linear leakage)'


CLIPPED_MARK = ' (clipped)'  # Beside an MI whose held-out bound was below 0 (shown as 0).


def _mig_row(name: str, m: dict) -> str:
  clipped = m.get('clipped', ())
  cells = [f'{m[k]:.4f}' + (CLIPPED_MARK if k in clipped else '')
           for k in mig_metrics.MI_KEYS]
  return f'| {name} | ' + ' | '.join(cells) + f' | {m["mig"]:.4f} |'


def _clipped_note(m: dict) -> list[str]:
  """Report lines explaining the MIs of `m` (a probe result) reported as 0."""
  clipped = m.get('clipped') or []
  if not clipped:
    return []
  raw = ', '.join(f'{k.replace("I_", "I(").replace("_", ";")}) = {m["raw"][k]:.4f}'
                  for k in clipped)
  return [f'Clipped: the held-out bound was below 0 ({raw} nats), a valid bound on an MI, '
          f'which is never negative, so it is reported as 0 and the MIG uses 0 (from the raw '
          f'bounds the MIG would be {m["raw"]["mig"]:.4f}). A negative bound means the probe '
          f'predicted the held-out frames worse than the factor\'s prior: it learned nothing '
          f'that generalises (too few frames, or no information to find). The raw bounds '
          f'are in metrics.json (mig.probe.raw).', '']


def report_warnings(results: dict) -> list[str]:
  """The report's warning lines: the run's training warnings (`results['warnings']`,
  as `training_warnings` finds them) and a MIG sample below `probe.MIN_STABLE_SAMPLES`."""
  found = [w for w in results.get('warnings', ()) if w.get('kind') != 'mig_samples']
  small = sample_size_warning(results['mig']['n_samples'])
  return [f'**Warning:** {w["message"]}' for w in found + ([small] if small else [])]


def _analogy_lines(a: dict | None) -> list[str]:
  """The report's analogy-accuracy paragraph (none when it was not measured)."""
  if not a:
    return []
  factors = sorted(k[len('ceiling_'):-len('_accuracy')] for k in a
                   if k.startswith('ceiling_') and k.endswith('_accuracy')
                   and k not in ('ceiling_content_accuracy', 'ceiling_frame_accuracy'))
  rows = [('content', 'content_accuracy')] + [(f, f'{f}_accuracy') for f in factors]
  head = '| | ' + ' | '.join(name for name, _ in rows) + ' | position error (px) |'
  lines = ['## Analogy accuracy', '',
           f'Content of one test video drawn with the poses of another ({int(a["n_pairs"])} pairs, '
           f'{int(a["n_frames"])} frames): the fraction whose objects a classifier reads as the '
           'content source\'s, and how far they are from the pose source\'s places.', '',
           head, '|---|' + '---|' * (len(rows) + 1)]
  for label, prefix in (('this model', ''), ('ceiling (true frames)', 'ceiling_'),
                        ('blobs (shape lost)', 'blob_'), ('chance', 'chance_')):
    cells = [f'{a[prefix + key]:.3f}' if prefix + key in a else '' for _, key in rows]
    pos = a.get(prefix + 'position_error_px') if prefix != 'chance_' else None
    pos_cell = '' if pos is None else f'{pos:.2f}'
    lines.append(f'| {label} | ' + ' | '.join(cells) + f' | {pos_cell} |')
  return lines + ['', f'Protocol: {a["protocol"]}', '']


def render_report(config, results: dict) -> str:
  """The markdown report: MIG table in the paper's Table 1 format, then pictures."""
  mg = results['mig']
  pm = mg['probe']
  r2 = mg['linear_r2']
  lines = [
      f'# {config.data.name}: {config.loss.name}',
      '',
      f'Autoencoder step {results["ae_step"]}'
      + (f', LSTM step {results["lstm_step"]}' if results['lstm_step'] is not None else
         ', no LSTM yet') + '.',
      '',
  ]
  for line in report_warnings(results):
    lines += [line, '']
  lines += [
      '## Disentanglement (nats; the paper\'s eq. 8, signed, whole latent vectors)',
      '',
      f'{mg["n_samples"]} test frames. Headline estimator: **{mg["estimator"]}**.',
      '',
      '| Estimator | I(fc;zc) | I(fc;zp) | I(fp;zc) | I(fp;zp) | MIG |',
      '|---|---|---|---|---|---|',
      _mig_row('probe (held-out lower bound)', pm),
  ]
  if 'paper' in mg:
    lines.append(_mig_row('paper protocol (kNN)', mg['paper']))
  lines += [''] + _clipped_note(pm) + [
      f'Probe: {pm["probe"]}. Each MI is H(f) minus the held-out cross-entropy of a probe '
      f'predicting f from the latent: a lower bound that is valid in any dimension. The '
      f'halves are normalised by the ceilings C(fc) = {pm["C_fc"]:.4f} and C(fp) = '
      f'{pm["C_fp"]:.4f} nats, the information the frames themselves hold (H(fc) = '
      f'{pm["H_fc"]:.4f}, H(fp) = {pm["H_fp"]:.4f}; factor values that render alike, such '
      f'as a square turned by 90 degrees, cannot be told apart by any encoder), so a '
      f'perfect model scores 1. Factor groups: content {", ".join(pm["groups_fc"])}; pose '
      f'{", ".join(pm["groups_fp"])}.',
      '',
  ]
  if 'paper' in mg:
    m = mg['paper']
    lines += [
        f'Paper protocol: kNN estimators (fc {m["estimator_fc"]}, fp {m["estimator_fp"]}, '
        f'k = 3), normalised by H(fc) = {m["H_fc"]:.4f} ({m["H_estimator_fc"]}) and H(fp) = '
        f'{m["H_fp"]:.4f} ({m["H_estimator_fp"]}). For comparison with the paper\'s Table 1 '
        f'only: in a 128-wide z_c the kNN estimates miss most of the pose information '
        f'(see docs/mig.md), so its I(fp;zc) under-reports leakage.',
        '',
    ]
  lines += [
      f'Linear read-outs (held-out R^2 of a least-squares map; 0 or below is none, above '
      f'{LEAKAGE_R2} is bold as leakage): pose from z_c {_leakage_r2(r2["pose_from_zc"])}, '
      f'pose from z_p {r2["pose_from_zp"]:.3f}, content (one-hot) from z_p '
      f'{_leakage_r2(r2["content_from_zp"])}, content from z_c {r2["content_from_zc"]:.3f}. '
      f'Classic per-dimension MIG (20 bins): {mg["classic"]["mig"]:.4f}.',
      '',
      '## Analogies',
      '',
      'Top row: pose source; left column: content sources; cell (i, j): content of row i '
      'with the pose of column j.',
      '',
      '![analogy](analogy.png)',
      '',
      *_analogy_lines(results.get('analogy')),
      '## Reconstructions',
      '',
      '![reconstruction](reconstruction.png)',
      '',
  ]
  if 'prediction' in results:
    p = results['prediction']
    steps = len(p['ssim_mean'])
    lines += [
        f'## Prediction ({p["n_videos"]} fixed test videos, {steps} future frames)',
        '',
        '| step | ' + ' | '.join(str(i + 1) for i in range(steps)) + ' |',
        '|---|' + '---|' * steps,
        '| SSIM | ' + ' | '.join(f'{v:.3f}' for v in p['ssim_mean']) + ' |',
        '| PSNR | ' + ' | '.join(f'{v:.2f}' for v in p['psnr_mean']) + ' |',
        *([f'| LPIPS ({p["lpips_net"]}) | ' + ' | '.join(
            f'{v:.3f} ± {ci:.3f}' for v, ci in zip(p['lpips_mean'], p['lpips_ci95'],
                                                   strict=True)) + ' |']
          if 'lpips_mean' in p else []),
        '',
        f'Test set: {p.get("test_set", "test-split videos fixed by eval.seed")}.',
        '',
        f'Protocol: {p["protocol"]}',
        '',
        *([f'LPIPS (lower is better; ± a 95% interval over videos): {p["lpips_protocol"]}',
           ''] if 'lpips_mean' in p else []),
        *([f'LPIPS not computed: {p["lpips_skipped"]}', ''] if 'lpips_skipped' in p else []),
        *([f'FVD: **{p["fvd"]:.1f}** (lower is better) over the first {p["fvd_videos"]} of '
           f'these videos, clips of {p["fvd_frames"]} frames: the context and the predicted '
           f'frames against the context and the true ones.', '',
           f'FVD protocol: {p["fvd_protocol"]}', '']
          if 'fvd' in p else []),
        *([f'FVD not computed: {p["fvd_skipped"]}', ''] if 'fvd_skipped' in p else []),
        '![ssim](ssim.png) ![psnr](psnr.png)',
        '',
        '![prediction](prediction.gif)',
        '',
        '![prediction](prediction.png)',
        '',
    ]
  return '\n'.join(lines)


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  return x


# ------------------------------------------------------ A run directory.


def evaluate_workdir(workdir: str, overrides=(), allow_stale_lstm: bool = False) -> dict:
  """Evaluates the newest checkpoints of `workdir`; `overrides` like 'eval.seed=3'
  may change `eval.*` fields only (the networks are fixed by the run).

  Refuses (ConfigError) an override naming no `eval` field or holding a value of another
  type, and (WorkdirError) an LSTM trained on an older autoencoder than the workdir's,
  unless `allow_stale_lstm`. The training timings of the previous `eval/metrics.json` are
  kept in the new one (see `recorded_timings`).
  """
  config = config_record.load_config(workdir)
  for item in overrides:
    field, sep, text = item.partition('=')
    field = field.removeprefix('--').removeprefix('config.')
    if not field.startswith('eval.') or not sep:
      raise errors.ConfigError(
          f'override {item!r}: expected eval.<field>=<value> (evaluation may change only '
          'eval.* fields; the networks are fixed by the run).')
    current = cli.field_value(config, field)
    config.eval[field[len('eval.'):]] = cli.parse_value(field, text, current)
  configuration.validate(config, num_devices=1)
  ae_state = runs.restore_autoencoder(config, workdir)
  lstm_state = runs.restore_lstm(config, workdir, ae_state, allow_stale=allow_stale_lstm)
  return evaluate(config, workdir, ae_state, lstm_state, timings=recorded_timings(workdir))


def print_summary(workdir: str, results: dict) -> None:
  if not results:
    return
  m = headline(results)
  extra = ''
  if 'paper' in results['mig'] and results['mig']['estimator'] != 'paper':
    extra = f'; paper-protocol (kNN) MIG {results["mig"]["paper"]["mig"]:.4f}'
  print(f'MIG {m["mig"]:.4f} [{results["mig"]["estimator"]}] (I(fc;zc) {m["I_fc_zc"]:.3f}, '
        f'I(fc;zp) {m["I_fc_zp"]:.3f}, I(fp;zc) {m["I_fp_zc"]:.3f}, I(fp;zp) '
        f'{m["I_fp_zp"]:.3f}){extra}; pose from z_c R^2 '
        f'{results["mig"]["linear_r2"]["pose_from_zc"]:.3f}; '
        f'classic MIG {results["mig"]["classic"]["mig"]:.4f}')
  if 'analogy' in results:
    a = results['analogy']
    print(f'Analogy accuracy {a["content_accuracy"]:.3f} (ceiling '
          f'{a["ceiling_content_accuracy"]:.3f}, blobs {a["blob_content_accuracy"]:.3f}, '
          f'chance {a["chance_content_accuracy"]:.3f}); position error '
          f'{a["position_error_px"]:.2f} px')
  if 'prediction' in results:
    p = results['prediction']
    print(f'SSIM per future step: {" ".join(f"{v:.3f}" for v in p["ssim_mean"])}')
    print(f'PSNR per future step: {" ".join(f"{v:.2f}" for v in p["psnr_mean"])}')
    if 'lpips_mean' in p:
      print(f'LPIPS ({p["lpips_net"]}) per future step: '
            f'{" ".join(f"{v:.3f}" for v in p["lpips_mean"])}')
    if 'fvd' in p:
      print(f'FVD {p["fvd"]:.1f} ({p["fvd_videos"]} clips of {p["fvd_frames"]} frames, '
            f'{p["fvd_resize"]} resize)')
  for w in results.get('warnings', ()):
    if w['kind'] != 'mig_samples':  # That one was logged as the evaluation began.
      print(f'Warning: {w["message"]}')
  print(f'Report: {os.path.join(workdir, "eval", "report.md")}')
