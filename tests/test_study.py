"""The study runner: 2 methods x 1 seed on the tiny config, killed between runs and
resumed; the interval arithmetic (by hand, and over several seeds on fake runs in
test_study_refusals.py); the refusal to compare runs evaluated differently."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from mipae_jax import study
from mipae_jax.commands import study as study_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CMD = ['-m', 'mipae_jax.commands.study', '--config=tiny',
       '--methods=mipae,drnet', '--seeds=0']


def test_t_interval_by_hand():
  # n = 4, mean 2.5, sample sd sqrt(5/3); t(0.975, 3 dof) = 3.182446 (tables).
  mean, half = study.t_interval([1.0, 2.0, 3.0, 4.0])
  assert mean == 2.5
  assert half == pytest.approx(3.182446 * math.sqrt(5 / 3) / 2, rel=1e-6)
  assert math.isnan(study.t_interval([1.0])[1])


def _row(method, seed, mig, i_fp_zc):
  return {'run': study.run_name(method, seed), 'method': method, 'seed': seed, 'mig': mig,
          'I_fp_zc': i_fp_zc}


def test_paired_difference_and_wins():
  rows = [_row('mipae', 0, 0.9, 0.1), _row('mipae', 1, 0.8, 0.3), _row('mipae', 2, 0.7, 0.2),
          _row('drnet', 0, 0.85, 0.2), _row('drnet', 1, 0.82, 0.2), _row('drnet', 2, 0.6, 0.2)]
  s = study.summarise(rows)
  assert list(s['methods']) == ['mipae', 'drnet']
  d = s['paired']['mipae-drnet']
  assert d['mig']['values'] == pytest.approx([0.05, -0.02, 0.1])
  assert d['mig']['wins'] == 2  # Higher MIG is better.
  assert d['I_fp_zc']['wins'] == 1  # Lower leakage is better: only seed 0.
  mean, half = study.t_interval([0.05, -0.02, 0.1])
  assert d['mig']['mean'] == pytest.approx(mean) and d['mig']['ci95'] == pytest.approx(half)
  assert s['methods']['mipae']['mig']['mean'] == pytest.approx(0.8)


def test_cli_refuses_bad_arguments(capsys):
  with pytest.raises(SystemExit):
    study_cli.parse(['--workdir=x', '--config=c.py', '--methods=mipae,nope'])
  with pytest.raises(SystemExit):
    study_cli.parse(['--workdir=x', '--config=c.py', '--config.seed=3'])
  with pytest.raises(SystemExit):
    study_cli.parse(['--workdir=x', '--config=c.py', '--jobs=0'])
  assert 'nope' in capsys.readouterr().err


@pytest.fixture(scope='module')
def finished_study(tmp_path_factory):
  """Runs the study, SIGKILLs it once its first run is done, then reruns the command."""
  workdir = str(tmp_path_factory.mktemp('study'))
  cmd = [sys.executable, *CMD, f'--workdir={workdir}']
  # The runs share this test worker's persistent compilation cache (tests/conftest.py):
  # runs of one method differ only in their seed, so each program compiles once, and
  # the later tests of this worker find the tiny config's programs compiled.
  first = os.path.join(workdir, 'mipae-s0', 'eval', 'metrics.json')
  # The study starts the next run once the first has exited and its time is recorded;
  # the first run still writes its report after its metrics.
  second = os.path.join(workdir, 'drnet-s0', 'study.log')

  def second_has_stepped():
    # Killed after its first step: inside the run, and after it compiled (and cached)
    # the one program the mipae run did not, so the kill cannot cut a cache entry short.
    if not os.path.exists(second):
      return False
    with open(second) as f:
      return 'ae: step 1/' in f.read()

  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          start_new_session=True)
  deadline = time.time() + 600
  while not second_has_stepped() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  assert os.path.exists(first) and second_has_stepped(), proc.stdout.read().decode()[-3000:]
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  first_mtime = os.path.getmtime(first)
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return workdir, out.stdout, first_mtime


def test_killed_study_resumes_and_skips_finished_runs(finished_study):
  workdir, stdout, first_mtime = finished_study
  assert '[study] mipae-s0: finished, skipped' in stdout
  assert os.path.getmtime(os.path.join(workdir, 'mipae-s0', 'eval', 'metrics.json')) \
      == first_mtime
  for name in ('mipae-s0', 'drnet-s0'):
    assert study.is_complete(os.path.join(workdir, name)), name
    with open(os.path.join(workdir, name, study.TIME_FILE)) as f:
      assert json.load(f)['seconds'] > 0


def test_study_writes_results_and_pictures(finished_study):
  workdir, _, _ = finished_study
  with open(os.path.join(workdir, study.RESULTS_JSON)) as f:
    res = json.load(f)
  assert {r['run'] for r in res['runs']} == {'mipae-s0', 'drnet-s0'}
  assert res['methods']['mipae']['seeds'] == [0]
  runs = {r['method']: r for r in res['runs']}
  assert res['methods']['mipae']['mig']['mean'] == pytest.approx(runs['mipae']['mig'])
  pair = res['paired']['mipae-drnet']
  assert pair['seeds'] == [0] and pair['mig']['n'] == 1
  assert pair['mig']['values'] == pytest.approx([runs['mipae']['mig'] - runs['drnet']['mig']])
  for r in res['runs']:
    assert {'paper_mig', 'r2_pose_from_zc', 'ssim', 'psnr', 'wall_seconds'} <= set(r)
    assert r['ae_step'] == 2 and r['lstm_step'] == 2
  md = open(os.path.join(workdir, study.RESULTS_MD)).read()
  assert '| MIG (probe) |' in md and 'Paired difference mipae-drnet' in md
  for png in ('mig.png', 'ssim.png', 'psnr.png', 'training.png'):
    assert os.path.getsize(os.path.join(workdir, png)) > 1000, png


def test_refuses_runs_evaluated_differently(finished_study, tmp_path):
  workdir, _, _ = finished_study
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  path = os.path.join(copy, 'drnet-s0', 'config.json')
  with open(path) as f:
    config = json.load(f)
  config['eval']['mig_samples'] = 999
  with open(path, 'w') as f:
    json.dump(config, f)
  with pytest.raises(ValueError, match=r'eval\.mig_samples differs.*drnet-s0: 999'):
    study.aggregate(copy)
  assert study_cli.main([f'--workdir={copy}', '--aggregate_only']) == 2
  # A run recorded before a field existed ran at that field's old value: comparable.
  with open(os.path.join(workdir, 'drnet-s0', 'config.json')) as f:
    config = json.load(f)
  for group, name in (('data', 'pipeline'), ('lstm', None), ('eval', 'test_seq')):
    if name is None:
      del config[group]
    else:
      del config[group][name]
  with open(path, 'w') as f:
    json.dump(config, f)
  assert len(study.aggregate(copy)['runs']) == 2


def test_channel_curves_read_each_channel_of_the_autoencoder_stage(tmp_path):
  from experiments.studies import channel_curves
  lines = [{'step': s, 'stage': 'ae', 'recon_loss_ch0': 0.017, 'recon_loss_ch1': 0.01 / s}
           for s in (100, 200)] + [{'step': 100, 'stage': 'lstm', 'lstm_loss': 1.0}]
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(x) + '\n' for x in lines))
  c = channel_curves.curves(str(tmp_path))
  assert c == {'recon_loss_ch0': [(100, 0.017), (200, 0.017)],
               'recon_loss_ch1': [(100, 1e-4), (200, 5e-5)]}
  channel_curves.main([f'--out={tmp_path}/c.png', str(tmp_path)])
  assert (tmp_path / 'c.png').stat().st_size > 0
