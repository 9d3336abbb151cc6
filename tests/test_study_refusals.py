"""What mipae-study refuses, and how it stops: fake run directories (a recorded config
and an evaluation, as `study.aggregate` reads them) and fake runs (a `python -c` child in
place of mipae-train), except one real study on the tiny config, signalled while its
first run trains."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from mipae_jax import config_record, configs, study
from mipae_jax.commands import study as study_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_run(study_dir, method, seed, mig=0.5):
  """A finished run's directory as mipae-train leaves it, as far as the study reads it."""
  config = configs.get('tiny')
  config.loss.name, config.seed = method, seed
  run_dir = os.path.join(study_dir, study.run_name(method, seed))
  config_record.record_config(run_dir, config)
  head = {'I_fc_zc': 1.0, 'I_fc_zp': 0.1, 'I_fp_zc': 0.2, 'I_fp_zp': 1.1, 'mig': mig}
  os.makedirs(os.path.join(run_dir, 'eval'))
  with open(os.path.join(run_dir, 'eval', 'metrics.json'), 'w') as f:
    json.dump({'ae_step': config.train.ae_steps, 'lstm_step': config.train.lstm_steps,
               'mig': {'estimator': 'paper', 'paper': head, 'classic': {'mig': 0.3}}}, f)
  return run_dir


def _fake_study(tmp_path):
  d = str(tmp_path / 'study')
  for method, seed, mig in (('mipae', 0, 0.6), ('drnet', 0, 0.4), ('mipae', 1, 0.7),
                            ('drnet', 1, 0.5)):
    _fake_run(d, method, seed, mig)
  return d


def _one_line(err: str) -> str:
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert 'Traceback' not in err
  return lines[0]


# ------------------------------------------------------- Item 2: what a run holds.


def test_aggregate_reads_a_fake_study(tmp_path, capsys):
  # The control for the refusals below: these fake runs aggregate.
  d = _fake_study(tmp_path)
  assert study_cli.main([f'--workdir={d}', '--aggregate_only']) == 0
  with open(os.path.join(d, study.RESULTS_JSON)) as f:
    res = json.load(f)
  assert len(res['runs']) == 4
  assert 'mipae: MIG 0.6500' in capsys.readouterr().out
  # Over the seeds: each method's mean and t interval, the paired differences by seed.
  assert res['methods']['mipae']['seeds'] == [0, 1]
  mean, half = study.t_interval([0.6, 0.7])
  assert res['methods']['mipae']['mig']['mean'] == pytest.approx(mean)
  assert res['methods']['mipae']['mig']['ci95'] == pytest.approx(half)
  pair = res['paired']['mipae-drnet']
  assert pair['seeds'] == [0, 1] and pair['mig']['n'] == 2
  assert pair['mig']['values'] == pytest.approx([0.2, 0.2])


def test_refuses_a_run_that_holds_another_method_and_seed(tmp_path, capsys):
  d = _fake_study(tmp_path)
  shutil.rmtree(os.path.join(d, 'mipae-s1'))
  shutil.copytree(os.path.join(d, 'drnet-s0'), os.path.join(d, 'mipae-s1'))
  with pytest.raises(study.StudyError, match=r'mipae-s1 holds a run of drnet with seed 0'):
    study.aggregate(d)
  assert study_cli.main([f'--workdir={d}', '--aggregate_only']) == 2
  line = _one_line(capsys.readouterr().err)
  assert 'mipae-s1' in line and "loss.name='drnet', seed=0" in line
  assert not os.path.exists(os.path.join(d, study.RESULTS_JSON))


def test_a_study_refuses_a_mismatched_run_before_starting_any(tmp_path, capsys,
                                                               monkeypatch):
  d = _fake_study(tmp_path)
  shutil.rmtree(os.path.join(d, 'drnet-s1'))
  shutil.copytree(os.path.join(d, 'mipae-s1'), os.path.join(d, 'drnet-s1'))
  monkeypatch.setattr(study_cli, 'train_command', _fail_if_called)
  assert study_cli.main(['--config=tiny', '--seeds=0,1', f'--workdir={d}']) == 2
  assert "drnet-s1 holds a run of mipae with seed 1" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize('flag, value, named', [('--seeds', '0,0,1', '0'),
                                                ('--seeds', '2,1,2,1', '2, 1'),
                                                ('--methods', 'mipae,mipae', 'mipae')])
def test_parser_refuses_repeated_seeds_and_methods(capsys, flag, value, named):
  with pytest.raises(SystemExit) as e:
    study_cli.parse(['--workdir=x', '--config=tiny', f'{flag}={value}'])
  assert e.value.code == 2
  line = _one_line(capsys.readouterr().err)
  assert f'{flag} lists {named} more than once' in line


def test_parser_refuses_a_negative_seed(capsys):
  with pytest.raises(SystemExit):
    study_cli.parse(['--workdir=x', '--config=tiny', '--seeds=0,-1'])
  assert '>= 0' in _one_line(capsys.readouterr().err)


# ----------------------------------------- Stray arguments: a value with spaces.


def test_parser_refuses_stray_positional_arguments(capsys):
  # --workdir=my runs/x unquoted splits in two; so does --config.FIELD VALUE.
  for argv, stray in ((['--workdir=my', 'runs/x', '--config=tiny'], "'runs/x'"),
                      (['--workdir=x', '--config=tiny', '--config.batch_size', '4'], "'4'")):
    with pytest.raises(SystemExit) as e:
      study_cli.parse(argv)
    assert e.value.code == 2
    line = _one_line(capsys.readouterr().err)
    assert f'unexpected argument(s) [{stray}]' in line and 'must be quoted' in line
  args = study_cli.parse(['--workdir=x', '--config=tiny', '--config.batch_size=4'])
  assert args.overrides == ['--config.batch_size=4']


# ------------------------------------------- Item 7: what the study directory is.


def test_aggregate_only_on_a_missing_directory(tmp_path, capsys):
  missing = str(tmp_path / 'no-such-study')
  assert study_cli.main([f'--workdir={missing}', '--aggregate_only']) == 2
  line = _one_line(capsys.readouterr().err)
  assert missing in line and 'does not exist' in line
  assert not os.path.exists(missing)


def test_aggregate_only_on_a_folder_of_other_files(tmp_path, capsys):
  (tmp_path / 'holiday-snaps').mkdir()
  (tmp_path / 'holiday-snaps' / 'beach.jpg').write_bytes(b'\xff\xd8')
  (tmp_path / 'notes.txt').write_text('x')
  (tmp_path / 'mipae-s0').mkdir()  # The right name, but nothing of a run in it.
  assert study_cli.main([f'--workdir={tmp_path}', '--aggregate_only']) == 2
  line = _one_line(capsys.readouterr().err)
  assert 'holds no study runs (directories named METHOD-sSEED with a config.json' in line
  assert 'holiday-snaps' in line and 'not finished' not in line


def test_other_files_beside_the_runs_are_not_runs(tmp_path):
  d = _fake_study(tmp_path)
  os.makedirs(os.path.join(d, 'holiday-snaps'))
  assert study.find_runs(d) == ['drnet-s0', 'drnet-s1', 'mipae-s0', 'mipae-s1']
  # A run the study started whose child stopped before recording its config is one.
  os.makedirs(os.path.join(d, 'drnet-s2'))
  open(os.path.join(d, 'drnet-s2', 'study.log'), 'w').close()
  with pytest.raises(ValueError, match='runs not finished: drnet-s2'):
    study.aggregate(d)


def _fail_if_called(*args):
  raise AssertionError(f'a run was started: {args}')


@pytest.mark.parametrize('extra, said', [
    (['--config.batch_size=1'], 'batch_size'),
    (['--config.batch_size=abc'], "--config.batch_size='abc'"),
    (['--config.train.ae_step=5'], "no field 'train.ae_step'"),
    (['--config.data.name=moving_mnist', '--config.data.path=/nonexistent/mnist.npz'],
     '/nonexistent/mnist.npz'),
])
def test_a_bad_config_is_refused_before_any_run(tmp_path, capsys, monkeypatch, extra, said):
  monkeypatch.setattr(study_cli, 'train_command', _fail_if_called)
  d = str(tmp_path / 'study')
  assert study_cli.main(['--config=tiny', '--methods=mipae,drnet', f'--workdir={d}',
                         *extra]) == 2
  line = _one_line(capsys.readouterr().err)
  assert said in line and 'No run was started' in line and 'mipae' in line
  assert not os.path.exists(d)


def test_a_config_file_that_fails_validation_is_refused(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(study_cli, 'train_command', _fail_if_called)
  path = tmp_path / 'my_config.py'
  path.write_text('from mipae_jax.configs import tiny\n\n\ndef get_config():\n'
                  '  c = tiny.get_config()\n  c.eval.future_frames = 9\n  return c\n')
  assert study_cli.main([f'--config={path}', f'--workdir={tmp_path}/s']) == 2
  assert 'eval.future_frames' in _one_line(capsys.readouterr().err)


def test_the_run_config_is_the_one_mipae_train_builds():
  config = study.requested_config('tiny', ['--config.train.ae_steps=7',
                                           '--config.model.normalize_pose'], 'drnet', 3)
  assert (config.loss.name, config.seed, config.train.ae_steps) == ('drnet', 3, 7)
  assert config.model.normalize_pose is True


# ---------------------------------------- Item 5: how a study stops (fake runs).


def _fake_child(code: str):
  """train_command replaced by a child running `code` (in the run's directory)."""

  def command(args, method, seed, run_dir):
    del args, method, seed
    return [sys.executable, '-c', f'import os, signal, sys; os.chdir({run_dir!r}); {code}']

  return command


def test_a_failed_run_stops_the_study_in_one_line(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(study_cli, 'train_command', _fake_child(
      "print('Traceback ...'); print('RunFailure: the loss diverged'); sys.exit(3)"))
  d = str(tmp_path / 'study')
  assert study_cli.main(['--config=tiny', '--methods=mipae', '--seeds=0,1',
                         f'--workdir={d}']) == 1
  line = _one_line(capsys.readouterr().err)
  log = os.path.join(d, 'mipae-s0', 'study.log')
  assert line.startswith(f'[study] mipae-s0 failed with exit status 3 (log {log}')
  assert 'RunFailure: the loss diverged' in line
  assert not os.path.exists(os.path.join(d, 'mipae-s1'))  # Never started.


@pytest.mark.parametrize('code, status, name', [
    ('sys.exit(130)', 130, 'SIGINT'),  # mipae-train saved and stopped on SIGINT.
    ('sys.exit(143)', 143, 'SIGTERM'),
    ('os.kill(os.getpid(), signal.SIGKILL)', 137, 'SIGKILL'),  # Killed outright.
])
def test_a_run_stopped_by_a_signal_stops_the_study(tmp_path, capsys, monkeypatch, code,
                                                   status, name):
  monkeypatch.setattr(study_cli, 'train_command', _fake_child(code))
  d = str(tmp_path / 'study')
  assert study_cli.main(['--config=tiny', '--methods=mipae', '--seeds=0,1',
                         f'--workdir={d}']) == status
  line = _one_line(capsys.readouterr().err)
  assert f'mipae-s0 stopped on {name}' in line and 'same command' in line
  assert not os.path.exists(os.path.join(d, 'mipae-s1'))


def test_a_finished_run_is_skipped_and_the_next_started(tmp_path, capsys, monkeypatch):
  d = _fake_study(tmp_path)
  shutil.rmtree(os.path.join(d, 'drnet-s1'))
  monkeypatch.setattr(study_cli, 'train_command', _fake_child('sys.exit(5)'))
  assert study_cli.main(['--config=tiny', '--seeds=0,1', f'--workdir={d}']) == 1
  out, err = capsys.readouterr()
  for name in ('mipae-s0', 'drnet-s0', 'mipae-s1'):
    assert f'[study] {name}: finished, skipped' in out
  assert 'drnet-s1 failed with exit status 5' in _one_line(err)


def test_with_jobs_a_failure_lets_the_running_run_finish(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(study_cli, 'train_command', _fake_child(
      "import time; sys.exit(3) if 'mipae' in os.getcwd() else time.sleep(1)"))
  d = str(tmp_path / 'study')
  assert study_cli.main(['--config=tiny', '--seeds=0,1', '--jobs=2', f'--workdir={d}']) == 1
  out, err = capsys.readouterr()
  assert 'mipae-s0 failed with exit status 3' in _one_line(err)
  assert '[study] drnet-s0: done' in out
  assert sorted(os.listdir(d)) == ['drnet-s0', 'mipae-s0']


_RUN = """
import glob, os, signal, sys, time
os.chdir(sys.argv[1])
signal.signal(signal.SIGTERM, lambda n, f: (open('got', 'w').write(str(n)), sys.exit(143)))
open('ready', 'w').close()
while len(glob.glob('../*/ready')) < 2:  # Both runs record what reaches them.
  time.sleep(0.05)
os.kill(os.getppid(), signal.SIGINT)
time.sleep(60)
"""

_STUDY = """
import os, sys
from mipae_jax.commands import study
study.train_command = lambda args, method, seed, run_dir: [sys.executable, RUN, run_dir]
sys.exit(study.main(sys.argv[1:]))
"""


def test_a_signal_to_the_study_reaches_every_running_run(tmp_path):
  """Two fake runs at a time that, once both run, signal the study (SIGINT, as
  `kill -INT STUDY` sends it) and record the signal passed on to them. The study runs in
  a process of its own: its handlers must not outlive it in the test's process."""
  d = str(tmp_path / 'study')
  (tmp_path / 'run.py').write_text(_RUN)
  (tmp_path / 'study.py').write_text(f'RUN = {str(tmp_path / "run.py")!r}\n' + _STUDY)
  out = subprocess.run([sys.executable, str(tmp_path / 'study.py'), '--config=tiny',
                        '--seeds=0,1', '--jobs=2', f'--workdir={d}'], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 130, out
  line = _one_line(out.stderr)
  assert line.startswith('[study] stopped by SIGINT: interrupted '), line
  assert 'mipae-s0' in line and 'drnet-s0' in line
  assert sorted(os.listdir(d)) == ['drnet-s0', 'mipae-s0']  # Seed 1's never started.
  for run in ('mipae-s0', 'drnet-s0'):
    with open(os.path.join(d, run, 'got')) as f:
      assert f.read() == str(int(signal.SIGTERM))  # Passed on, as study_cli.STOP_RUN.


# ------------------------------------------- Item 5: a real study, signalled.


def _wait_for(proc, condition, what, seconds=600):
  deadline = time.time() + seconds
  while not condition() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.5)
  if not condition():
    proc.kill()
    raise AssertionError(f'{what} did not happen: {proc.communicate(timeout=60)}')


def _log(path, start=0):
  with open(path) as f:
    return f.read()[start:]


@pytest.mark.slow  # A real run compiles twice (about 2 minutes on a loaded CPU).
def test_a_signal_to_the_study_stops_it_and_its_run(tmp_path):
  """SIGINT to the study process alone (as `kill -INT` sends it): the study passes it
  on, the run saves and stops, the second run never starts. Then the same command
  resumes, and Ctrl-C in a terminal (SIGINT to the whole process group) stops it so."""
  d = str(tmp_path / 'study')
  cmd = [sys.executable, '-m', 'mipae_jax.commands.study', '--config=tiny',
         '--methods=mipae', '--seeds=0,1', f'--workdir={d}',
         '--config.train.ae_steps=100000', '--config.train.ckpt_every=100000']
  log = os.path.join(d, 'mipae-s0', 'study.log')
  start = 0
  for kill in (lambda pid: os.kill(pid, signal.SIGINT),
               lambda pid: os.killpg(pid, signal.SIGINT)):
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
      # A step logged: the run is in its training loop, where a stop request is saved.
      _wait_for(proc, lambda s=start: os.path.exists(log) and 'ae: step ' in _log(log, s),
                'a training step of mipae-s0')
      kill(proc.pid)
      out, err = proc.communicate(timeout=300)
    finally:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, (out, err)
    line = _one_line(err)
    assert line.startswith('[study] stopped by SIGINT: interrupted mipae-s0;'), line
    assert 'Run the same command to resume' in line
    assert not os.path.exists(os.path.join(d, 'mipae-s1'))
    said = _log(log, start)
    assert 'received: saved the ae stage at step' in said, said[-3000:]
    if start:
      assert 'ae: resumed from step' in said, said[-3000:]
    start = len(_log(log))


def test_the_study_carries_lpips_and_the_analogy_accuracy(tmp_path):
  """Issue 25: the aggregator reports LPIPS per step and the analogy accuracy per method."""
  d = str(tmp_path / 'study')
  for method, seed, acc in (('mipae', 0, 0.5), ('mipae', 1, 0.7), ('drnet', 0, 0.2),
                            ('drnet', 1, 0.4)):
    run_dir = _fake_run(d, method, seed)
    path = os.path.join(run_dir, 'eval', 'metrics.json')
    with open(path) as f:
      m = json.load(f)
    m['prediction'] = {'ssim_mean': [0.8, 0.7], 'psnr_mean': [25.0, 24.0],
                       'lpips_mean': [0.1 + acc / 10, 0.2]}
    m['analogy'] = {'content_accuracy': acc, 'position_error_px': 1.0 + seed}
    with open(path, 'w') as f:
      json.dump(m, f)
  summary = study.aggregate(d)
  mipae = summary['methods']['mipae']
  assert mipae['analogy_accuracy']['mean'] == pytest.approx(0.6)
  assert mipae['analogy_position_px']['mean'] == pytest.approx(1.5)
  assert mipae['lpips']['mean'] == pytest.approx([0.16, 0.2])
  assert summary['methods']['drnet']['lpips_mean']['mean'] == pytest.approx((0.13 + 0.2) / 2)
  with open(os.path.join(d, study.RESULTS_MD)) as f:
    text = f.read()
  assert 'analogy accuracy' in text and 'LPIPS (mean over steps)' in text
  assert os.path.getsize(os.path.join(d, 'lpips.png')) > 1000  # Per step, with bands.
