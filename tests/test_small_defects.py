"""Small defects of the report, the plots, the preview, mipae-prepare and .gitignore, each
checked on small inputs (no training)."""

import json
import os
import re
import types

import numpy as np
import pytest
from helpers import stub_scoring
from PIL import Image, ImageDraw

from mipae_jax import configs, evaluate, visualize
from mipae_jax.data import preview

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mig(pose_from_zc=0.5, content_from_zp=0.0) -> dict:
  """`results['mig']` as `evaluate.disentanglement` returns it, made-up numbers."""
  m = {'I_fc_zc': 0.9, 'I_fc_zp': 0.1, 'I_fp_zc': 0.2, 'I_fp_zp': 0.8, 'mig': 0.7}
  probe = dict(m, probe='chain', C_fc=5.0, C_fp=6.0, H_fc=5.5, H_fp=6.9,
               groups_fc=['shape'], groups_fp=['x', 'y'])
  return {'estimator': 'probe', 'n_samples': 500, 'content_factors': ['shape'],
          'pose_factors': ['x', 'y'], 'probe': probe,
          'linear_r2': {'pose_from_zc': pose_from_zc, 'pose_from_zp': 0.95,
                        'content_from_zp': content_from_zp, 'content_from_zc': 0.9},
          'classic': {'mig': 0.3}}


def _report(**r2) -> str:
  config = configs.get('tiny')
  results = {'ae_step': 2, 'lstm_step': None, 'mig': _mig(**r2)}
  return evaluate.render_report(config, results)


# 1. mipae-evaluate keeps the training run's timings and adds its own.


def test_reevaluation_keeps_training_timings(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  os.makedirs(os.path.join(workdir, 'eval'))
  training = {'ae': {'steps': 2, 'steps_this_run': 2, 'seconds': 12.5,
                     'steps_per_second': 0.16},
              'lstm': {'steps': 2, 'steps_this_run': 2, 'seconds': 7.25,
                       'steps_per_second': 0.276}}
  with open(os.path.join(workdir, 'eval', 'metrics.json'), 'w') as f:
    json.dump({'timings': dict(training, eval={'seconds': 99.0})}, f)
  # Everything but the timings' path through evaluate_workdir -> evaluate is stubbed.
  config = configs.get('tiny')
  monkeypatch.setattr(evaluate.config_record, 'load_config', lambda w: config)
  monkeypatch.setattr(evaluate.runs, 'restore_autoencoder',
                      lambda c, w: types.SimpleNamespace(step=2))
  monkeypatch.setattr(evaluate.runs, 'restore_lstm', lambda c, w, ae, allow_stale: None)
  monkeypatch.setattr(evaluate, 'data', types.SimpleNamespace(make_source=lambda c: None))
  stub_scoring(monkeypatch, evaluate, _mig())

  for _ in range(2):  # A second re-evaluation still finds the training's timings.
    results = evaluate.evaluate_workdir(workdir)
    with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
      saved = json.load(f)['timings']
    assert results['timings'] == saved
    assert {k: saved[k] for k in ('ae', 'lstm')} == training
    assert set(saved) == {'ae', 'lstm', 'eval'}
    assert 0 <= saved['eval']['seconds'] < 99.0  # This evaluation's, not the old one.


def test_recorded_timings_without_an_earlier_evaluation(tmp_path):
  assert evaluate.recorded_timings(str(tmp_path)) == {}
  os.makedirs(tmp_path / 'eval')
  (tmp_path / 'eval' / 'metrics.json').write_text('not json')
  assert evaluate.recorded_timings(str(tmp_path)) == {}


# 2. report.md bolds an R^2 read-out as leakage only above the threshold.


@pytest.mark.parametrize('value', [-0.34, 0.0, evaluate.LEAKAGE_R2 / 2])
def test_report_does_not_bold_r2_without_leakage(value):
  report = _report(pose_from_zc=value, content_from_zp=value)
  line = next(x for x in report.splitlines() if x.startswith('Linear read-outs'))
  assert f'{value:.3f}' in line
  assert f'**{value:.3f}**' not in line
  assert '(leakage)' not in line


def test_report_bolds_r2_leakage():
  line = next(x for x in _report(pose_from_zc=0.604, content_from_zp=0.25).splitlines()
              if x.startswith('Linear read-outs'))
  assert 'pose from z_c **0.604** (leakage)' in line
  assert 'content (one-hot) from z_p **0.250** (leakage)' in line


# 3. ssim.png / psnr.png tick whole future steps.


@pytest.mark.parametrize('steps', [2, 3, 5, 10])
def test_per_step_plot_has_integer_ticks(tmp_path, steps):
  mean = np.linspace(0.9, 0.5, steps)
  fig = visualize.plot_per_step({'mipae': (mean, np.full(steps, 0.02))},
                                str(tmp_path / 'ssim.png'), 'SSIM')
  ax = fig.axes[0]  # The figure as saved.
  lo, hi = ax.get_xlim()
  shown = [t for t in ax.get_xticks() if lo <= t <= hi]
  assert len(shown) >= 2
  assert all(float(t).is_integer() for t in shown), shown


def test_plot_per_step_writes_png(tmp_path):
  visualize.plot_per_step({'a': ([0.9, 0.8], [0.01, 0.02])}, str(tmp_path / 'ssim.png'), 'SSIM')
  with Image.open(tmp_path / 'ssim.png') as im:
    assert im.format == 'PNG'


# 4. The preview's filmstrip makes room for all of its text.


class _FakeSource:
  """10-frame videos of 2 objects, every frame pure red (text is black on white)."""
  content_factor_names = ('color_0', 'shape_0', 'scale_0', 'color_1', 'shape_1', 'scale_1')
  pose_factor_names = ('x_0', 'y_0', 'x_1', 'y_1')

  def sample_batch(self, key, n, split):
    del key, split
    videos = np.zeros((n, 10, 16, 16, 3), np.float32)
    videos[..., 0] = 1.0
    rng = np.random.default_rng(0)
    factors = {'content': rng.integers(10, 40, (n, 10, 6), np.int32),
               'pose': rng.integers(10, 32, (n, 10, 4), np.int32)}
    return videos, factors


def test_preview_filmstrip_holds_its_text(tmp_path, monkeypatch, capsys):
  drawn = []  # (text, bbox) of every text drawn, in order.
  original = ImageDraw.ImageDraw.text

  def record(self, xy, text, *args, **kwargs):
    drawn.append((text, self.textbbox(xy, text)))
    return original(self, xy, text, *args, **kwargs)

  monkeypatch.setattr(ImageDraw.ImageDraw, 'text', record)
  _, png = preview.write_preview(_FakeSource(), str(tmp_path), num_videos=2, scale=2)
  printed = capsys.readouterr().out
  with Image.open(png) as im:
    pixels = np.asarray(im.convert('RGB'))
  height, width, _ = pixels.shape
  red = np.all(pixels == (255, 0, 0), axis=-1)
  assert red.sum() == 2 * 10 * 32 * 32  # Every frame whole: no text drawn over one.
  assert drawn
  for _, (left, top, right, bottom) in drawn:
    assert 0 <= left and right <= width and 0 <= top and bottom <= height
    assert not red[top:bottom, left:right].any()  # The text stays off the frames.
  # Nothing cut: every pose number printed is drawn, in order.
  text = '\n'.join(t for t, _ in drawn)
  for i in range(2):
    shown = text.split(f'video {i}:')[1].split('video ')[0].split('frame:')[1]
    pose = printed.split(f'video {i}:')[1].split('frame:')[1].split('\n')[0]
    assert re.findall(r'\d+', shown) == re.findall(r'\d+', pose)


def test_preview_filmstrip_widens_for_a_long_word():
  videos = np.zeros((1, 2, 8, 8, 3), np.uint8)
  word = 'x' * 400
  strip = preview.filmstrip(videos, [f'video 0: {word}\n  pose: 1'])
  measure = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  assert strip.size[0] >= measure.textbbox((0, 0), word)[2]


# 5. mipae-prepare says what it builds, not that it downloads.


def test_prepare_does_not_claim_a_download(tmp_path, capsys, caplog):
  from mipae_jax.data import prepare

  config = configs.get('tiny')
  caplog.set_level('INFO')
  name = prepare.prepare(config.data, str(tmp_path), 4, 2)
  captured = capsys.readouterr()
  text = captured.out + captured.err + caplog.text
  assert 'Downloading and preparing' not in text
  assert 'downloaded and prepared' not in text
  ours = [x for x in captured.out.splitlines() if x.startswith('Building ')]
  assert len(ours) == 1
  assert name in ours[0] and str(tmp_path) in ours[0] and '4 train and 2 test' in ours[0]
  # An existing build is reused, silently.
  assert prepare.prepare(config.data, str(tmp_path), 4, 2) == name
  assert 'Building ' not in capsys.readouterr().out


# 6. .gitignore holds the README's example workdirs.


def test_gitignore_has_example_workdirs():
  with open(os.path.join(ROOT, '.gitignore')) as f:
    entries = {line.strip() for line in f}
  assert {'/runs/', '/studies/'} <= entries
  assert {'.venv/', '/workdirs/', 'mipae_colab_out/'} <= entries  # Kept.
