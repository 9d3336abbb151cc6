"""The pretrained model: exported from a run (mipae-export), read back by `load_run`
bit for bit, refused when tampered with, its analogy accuracy recomputed, and drawn into
the demo's report."""

import json
import os
import shutil

import numpy as np
import pytest

import mipae_jax
from mipae_jax import errors, exported, pretrained
from mipae_jax.commands import export as export_cli
from mipae_jax.metrics import analogy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A classifier that trains in seconds: the test needs the same numbers back, not good ones.
QUICK_CLASSIFIER = analogy.ClassifierConfig(steps=10, batch_size=8, heldout_frames=32)


@pytest.fixture(scope='module')
def run_dir(tiny_run, tmp_path_factory):
  """A copy of the tiny run (2 autoencoder and 2 LSTM steps, no evaluation), with the
  training timings an evaluation would have recorded."""
  path = str(tmp_path_factory.mktemp('run') / 'run')
  shutil.copytree(tiny_run, path)
  os.makedirs(os.path.join(path, 'eval'))
  with open(os.path.join(path, 'eval', 'metrics.json'), 'w') as f:
    json.dump({'timings': {'ae': {'steps': 2, 'steps_this_run': 2, 'seconds': 30.0},
                           'lstm': {'steps': 2, 'steps_this_run': 2, 'seconds': 6.0}}}, f)
  return path


@pytest.fixture(scope='module')
def model_dir(run_dir, tmp_path_factory):
  """`run_dir` exported, with notes."""
  out = str(tmp_path_factory.mktemp('exported') / 'model')
  pretrained.export(run_dir, out, {'probe_mig': 0.25, 'words': 'tiny'}, command='make x',
                    machine='2 CPU cores')
  return out


@pytest.fixture(scope='module')
def measured_dir(run_dir, tmp_path_factory):
  """`run_dir` exported with its analogy accuracy on 4 test videos."""
  out = str(tmp_path_factory.mktemp('exported') / 'measured')
  pretrained.export(run_dir, out, {'probe_mig': 0.25}, machine='2 CPU cores',
                    analogy_videos=4, classifier=QUICK_CLASSIFIER,
                    cache_dir=str(tmp_path_factory.mktemp('analogy-cache')))
  return out


def _videos(run, n=3):
  t = run.config.data.input_frames + run.config.data.target_frames
  return np.random.default_rng(0).uniform(size=(n, t) + run.frame_shape).astype(np.float32)


def test_the_exported_model_computes_what_the_run_computes_bit_for_bit(run_dir, model_dir):
  run, model = mipae_jax.load_run(run_dir), mipae_jax.load_run(model_dir)
  assert (model.ae_step, model.lstm_step) == (run.ae_step, run.lstm_step) == (2, 2)
  assert model.config.to_dict() == run.config.to_dict()
  assert model.variables['critic'] is None
  video = _videos(run)
  for a, b in [(run.encode(video[:, 0]), model.encode(video[:, 0])),
               (run.reconstruct(video), model.reconstruct(video)),
               (run.analogy(video[:2, 0], video[2]), model.analogy(video[:2, 0], video[2])),
               (run.predict(video[:, :2], 2), model.predict(video[:, :2], 2))]:
    for x, y in zip(np.atleast_1d(a) if not isinstance(a, tuple) else a,
                    np.atleast_1d(b) if not isinstance(b, tuple) else b, strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert isinstance(pretrained.load(model_dir), mipae_jax.runs.Run)


def test_the_npz_holds_networks_only_and_is_smaller_than_a_checkpoint(run_dir, model_dir):
  with np.load(os.path.join(model_dir, exported.VARIABLES_FILE), allow_pickle=False) as f:
    keys = list(f.files)
  assert 'autoencoder/params/content_encoder/c1/conv/kernel' in keys
  assert {k.split('/')[0] + '/' + k.split('/')[1] for k in keys} == {
      'autoencoder/params', 'autoencoder/batch_stats', 'lstm/params'}
  assert not [k for k in keys if any(w in k for w in ('opt_state', 'critic', 'mu', 'nu'))]
  step_dir = os.path.join(run_dir, 'checkpoints', 'ae', '2')
  checkpoint_bytes = sum(os.path.getsize(os.path.join(d, f))
                         for d, _, files in os.walk(step_dir) for f in files)
  assert os.path.getsize(os.path.join(model_dir, exported.VARIABLES_FILE)) < checkpoint_bytes
  record = exported.read_record(model_dir)
  assert record['source']['workdir'] == os.path.basename(run_dir)
  assert (record['ae_step'], record['lstm_step'], record['command']) == (2, 2, 'make x')
  assert record['training']['seconds'] == 36.0
  assert record['training']['machine'] == '2 CPU cores'
  assert record['metrics'] == {'probe_mig': 0.25, 'words': 'tiny'}


def _tampered(model_dir, tmp_path, change):
  out = tmp_path / 'tampered'
  out.mkdir(parents=True)
  for name in ('config.json', exported.RECORD_FILE):
    with open(os.path.join(model_dir, name), 'rb') as f:
      (out / name).write_bytes(f.read())
  with np.load(os.path.join(model_dir, exported.VARIABLES_FILE), allow_pickle=False) as f:
    arrays = {k: f[k] for k in f.files}
  change(arrays)
  np.savez_compressed(out / exported.VARIABLES_FILE, **arrays)
  return str(out)


def test_a_tampered_npz_is_refused_naming_the_key(model_dir, tmp_path):
  key = 'autoencoder/params/decoder/upc4_conv/kernel'
  gone = _tampered(model_dir, tmp_path / 'a', lambda a: a.pop(key))
  with pytest.raises(errors.DataError, match=f'{key} is missing'):
    mipae_jax.load_run(gone)
  other = 'autoencoder/batch_stats/pose_encoder/c1/bn/mean'
  shape = _tampered(model_dir, tmp_path / 'b', lambda a: a.update({other: a[other][:-1]}))
  with pytest.raises(errors.DataError, match=f'{other} is float32\\[7\\], the config'):
    mipae_jax.load_run(shape)
  values = _tampered(model_dir, tmp_path / 'c', lambda a: a.update({key: a[key] + 1}))
  with pytest.raises(errors.DataError, match='changed since it was exported'):
    mipae_jax.load_run(values)


def test_a_folder_that_is_neither_a_run_nor_an_export_is_refused(tmp_path):
  with pytest.raises(errors.NotARunError, match='not a run directory'):
    mipae_jax.load_run(str(tmp_path))
  with pytest.raises(errors.NotARunError, match='not an exported model'):
    pretrained.load(str(tmp_path))
  (tmp_path / exported.RECORD_FILE).write_text('{"format": 99}')
  with pytest.raises(errors.DataError, match='not an exported model of format 1'):
    mipae_jax.load_run(str(tmp_path))


def test_the_recorded_analogy_accuracy_is_recomputed_equal(measured_dir, model_dir):
  recorded = exported.read_record(measured_dir)['analogy']
  assert recorded['videos'] == 4 and os.path.isfile(
      os.path.join(measured_dir, pretrained.CLASSIFIER_FILE))
  assert 'analogy' not in exported.read_record(model_dir)
  with pytest.raises(errors.DataError, match='records no analogy accuracy'):
    pretrained.recompute_analogy(model_dir)
  again = pretrained.recompute_analogy(measured_dir)
  for key in ('content_accuracy', 'shape_accuracy', 'scale_accuracy', 'frame_accuracy',
              'n_pairs', 'n_frames', 'ceiling_content_accuracy', 'chance_content_accuracy'):
    assert again[key] == recorded['results'][key], key
  assert again['position_error_px'] == pytest.approx(
      recorded['results']['position_error_px'], abs=1e-3)


def test_the_panel_draws_the_pictures_and_one_section_of_the_report(measured_dir, tmp_path):
  report = tmp_path / 'eval' / 'report.md'
  report.parent.mkdir()
  report.write_text('# demo report\n\nIts own model.\n')
  out = str(tmp_path / 'eval' / 'pretrained')
  for _ in range(2):  # A second render replaces the first section.
    section = pretrained.render_panel(measured_dir, out, str(report), num_videos=3)
  for name in ('analogy.png', 'reconstruction.png', 'prediction.png', 'prediction.gif'):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  text = report.read_text()
  assert text.startswith('# demo report\n\nIts own model.\n')
  assert text.count(pretrained.PANEL_MARK) == 1 and text.endswith(section)
  assert ('## The pretrained model (2 autoencoder + 2 LSTM steps, 0.6 minutes of training '
          'on 2 CPU cores)') in text
  assert '![pretrained analogies](pretrained/analogy.png)' in text
  assert 'Analogy accuracy, recorded at export on 4 test videos' in text
  assert 'probe_mig 0.250' in text


def test_without_a_shipped_model_the_panel_says_so_in_one_line(tmp_path, capsys):
  (tmp_path / 'eval').mkdir()
  status = pretrained.main([f'--workdir={tmp_path}', f'--model={tmp_path / "none"}'])
  assert status == 0
  lines = [x for x in capsys.readouterr().out.splitlines() if x.strip()]
  assert len(lines) == 1 and lines[0].startswith('No pretrained model is shipped')
  assert not (tmp_path / 'eval' / 'report.md').exists()


def _export_cli(capsys, *args):
  with pytest.raises(SystemExit) as e:
    export_cli.main(['mipae-export', *args])
  out = capsys.readouterr()
  return e.value.code, out.out, [x for x in out.err.splitlines() if x.strip()]


def test_the_command_exports_and_refuses_in_one_line(run_dir, tmp_path, capsys):
  out = tmp_path / 'model'
  code, stdout, _ = _export_cli(capsys, f'--workdir={run_dir}', f'--out={out}', '--step=1',
                                '--nolstm', '--training_hours=2', '--note=analogy=0.5')
  assert code in (0, None), stdout
  assert 'autoencoder step 1 (no pose LSTM)' in stdout and 'training time 2.00 h' in stdout
  model = mipae_jax.load_run(str(out))
  assert (model.ae_step, model.lstm_step) == (1, None)
  assert exported.read_record(str(out))['metrics'] == {'analogy': 0.5}
  for args, words in [
      ([f'--workdir={run_dir}', f'--out={out}'], 'is a non-empty folder'),
      ([f'--workdir={tmp_path / "nothing"}', f'--out={tmp_path / "o1"}'], 'not a run'),
      ([f'--workdir={run_dir}', f'--out={tmp_path / "o2"}', '--step=7'],
       'no autoencoder checkpoint at step 7'),
      ([f'--workdir={run_dir}', f'--out={tmp_path / "o3"}', '--step=1'],
       'does not go with this autoencoder'),
      ([f'--workdir={out}', f'--out={tmp_path / "o4"}'], 'an exported model already'),
  ]:
    code, _, err = _export_cli(capsys, *args)
    assert code == 2 and len(err) == 1 and words in err[0], (args, err)
  assert not [p for p in os.listdir(tmp_path) if p.startswith('.') or p.startswith('o')]


def test_training_time_is_recorded_only_when_every_step_was_timed(tmp_path):
  (tmp_path / 'eval').mkdir()
  metrics = tmp_path / 'eval' / 'metrics.json'
  metrics.write_text(json.dumps({'timings': {
      'ae': {'steps': 100, 'steps_this_run': 40, 'seconds': 10.0},
      'lstm': {'steps': 5, 'steps_this_run': 5, 'seconds': 1.0}}}))
  resumed = pretrained.training_time(str(tmp_path), 100, 5)
  assert resumed['seconds'] is None and resumed['stages']['ae']['steps_this_run'] == 40
  assert pretrained.training_time(str(tmp_path / 'x'), 100, None) == {'seconds': None,
                                                                      'stages': {}}
  assert pretrained.label({'ae_step': 100000, 'lstm_step': None, 'training': {
      'seconds': 7560.0, 'machine': 'a laptop'}}) == (
          '100,000 autoencoder steps, 2.1 hours of training on a laptop')


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, pretrained.DEFAULT_DIR)),
                    reason='no pretrained model is shipped yet')
def test_the_shipped_model_loads_and_recomputes_its_analogy_accuracy():
  path = os.path.join(ROOT, pretrained.DEFAULT_DIR)
  model = mipae_jax.load_run(path)
  recorded = exported.read_record(path)
  assert model.ae_step == recorded['ae_step'] and model.lstm_step is not None
  again = pretrained.recompute_analogy(path)
  result = recorded['analogy']['results']
  assert again['content_accuracy'] == result['content_accuracy']
  assert again['position_error_px'] == pytest.approx(result['position_error_px'], abs=1e-3)
