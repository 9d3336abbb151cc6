"""mipae-convert: published checkpoints -> a run directory that mipae-evaluate reads as a
trained one; bad input refused in one line (exit status 2), never by running a file.

The published files are built here: `benchmarks/torch_reference.py`'s networks (published
state_dict names) for the tiny config, saved with `torch.save` in the published layout.
The command runs in this process (`main(argv)`), as the console script calls it.
"""

import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip(
    'torch', reason='PyTorch is not installed (pip install -e .[bench] pins torch==2.13.0); '
    'mipae-convert needs it to read .pth files.')

from test_convert import UNLOADABLE, write_unloadable  # noqa: E402

from benchmarks import torch_reference as ref  # noqa: E402
from mipae_jax import cli, config_record, configs, convert, evaluate, runs  # noqa: E402
from mipae_jax.commands import convert as convert_cli  # noqa: E402


@pytest.fixture(autouse=True)
def _no_verbose(monkeypatch):
  monkeypatch.delenv(cli.VERBOSE_ENV, raising=False)  # Refusals as one line, no traceback.


def published_files(tmp_path, config, global_itr=7):
  """(autoencoder .pth, LSTM .pth) of `config`'s networks in the published layout: the
  autoencoder run's file counts its iterations in `global_itr`, the LSTM's counts none."""
  nets = ref.build(config)
  ae, lstm = str(tmp_path / 'ae.pth'), str(tmp_path / 'lstm.pth')
  adam = torch.optim.Adam(nets['critic'].parameters())
  torch.save({'global_itr': global_itr,
              'content_encoder': nets['content_encoder'].state_dict(),
              'position_encoder': nets['pose_encoder'].state_dict(),
              'decoder': nets['decoder'].state_dict(),
              'discriminator': nets['critic'].state_dict(),
              'discriminator_optim': adam.state_dict()}, ae)
  torch.save({'lstm': nets['lstm'].state_dict()}, lstm)
  return ae, lstm


def run(capsys, *args) -> tuple[int, str, str]:
  """(exit status, stdout, stderr) of `mipae-convert ARGS`."""
  with pytest.raises(SystemExit) as e:
    convert_cli.main(['mipae-convert', *args])
  out = capsys.readouterr()
  return e.value.code or 0, out.out, out.err


def one_line(err: str) -> str:
  """The refusal: stderr less absl's informational lines, asserted to be one line."""
  lines = [x for x in err.splitlines() if x.strip() and not x.startswith(('I1', 'W1'))]
  assert len(lines) == 1, err
  assert 'Traceback' not in err
  return lines[0]


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.slow  # The evaluation (MIG probes, prediction, pictures) takes the time.
def test_converted_run_directory_evaluates_as_a_trained_run(tmp_path, capsys):
  config = configs.get('tiny')
  # As the override below, which also names the LSTM's step. The tiny config's data and
  # networks otherwise: its evaluation programs (the probes) are those of every tiny run.
  config.train.lstm_steps = 3
  ae, lstm = published_files(tmp_path, config)
  out = str(tmp_path / 'runs' / 'published')
  code, stdout, err = run(capsys, f'--checkpoint={ae}', f'--lstm_checkpoint={lstm}',
                          '--config=tiny', '--config.train.lstm_steps=3', f'--out={out}')
  assert code == 0, err
  assert f'mipae-evaluate --workdir={out}' in stdout
  assert f'checkpoints/ae/7  the autoencoder of {ae} (step: global_itr)' in stdout
  assert f'checkpoints/lstm/{config.train.lstm_steps}  the pose LSTM of {lstm} (step: ' \
         'config.train.lstm_steps)' in stdout
  assert sorted(os.listdir(tmp_path / 'runs')) == ['published']  # No temporary left.
  assert config_record.load_config(out).to_dict() == config.to_dict()

  # The restored states hold exactly the converted weights, with fresh optimisers.
  params, stats = convert.from_torch_state_dict(
      {**convert.load_torch_checkpoint(ae), **convert.load_torch_checkpoint(lstm)}, config)
  ae_state = runs.restore_autoencoder(config, out)
  assert int(ae_state.step) == 7
  assert_trees_equal(ae_state.model.params,
                     {k: params[k] for k in ('content_encoder', 'pose_encoder', 'decoder')})
  assert_trees_equal(ae_state.batch_stats, stats)
  assert_trees_equal(ae_state.critic.params, params['critic'])
  assert all(not np.any(x) for x in jax.tree.leaves(ae_state.model.opt_state))
  lstm_state = runs.restore_lstm(config, out, ae_state)  # Refuses a stale LSTM.
  assert int(lstm_state.step) == config.train.lstm_steps
  assert_trees_equal(lstm_state.lstm.params, params['lstm'])

  results = evaluate.evaluate_workdir(out)
  assert results['ae_step'] == 7 and results['lstm_step'] == config.train.lstm_steps
  assert np.all(np.isfinite(results['prediction']['ssim_mean']))
  assert os.path.exists(os.path.join(out, 'eval', 'report.md'))


def test_help_exits_0(capsys):
  code, stdout, _ = run(capsys, '--help')
  assert code == 0
  assert 'mipae-convert --checkpoint=' in stdout and 'mipae-evaluate --workdir=' in stdout


def test_a_missing_out_is_refused_in_one_line(capsys, tmp_path):
  code, _, err = run(capsys, f'--checkpoint={tmp_path}/ae.pth', '--config=tiny')
  assert code == 2
  assert one_line(err).startswith('UsageError: --out is required')


def test_an_existing_non_empty_out_is_refused(capsys, tmp_path):
  ae, _ = published_files(tmp_path, configs.get('tiny'))
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'notes.txt').write_text('mine\n')
  code, _, err = run(capsys, f'--checkpoint={ae}', '--config=tiny', f'--out={out}')
  assert code == 2
  assert one_line(err).startswith(f'WorkdirError: {out} is not empty (it holds notes.txt)')
  assert os.listdir(out) == ['notes.txt'] and (out / 'notes.txt').read_text() == 'mine\n'


@pytest.mark.parametrize('kind', [*UNLOADABLE, 'missing'])
def test_unloadable_checkpoints_are_refused_in_one_line(capsys, tmp_path, kind):
  """Random bytes, a pickle that would run a shell command, an empty file, no file: one
  line naming the file, exit 2, no advice to load it unsafely, nothing run or written."""
  path, marker = str(tmp_path / f'{kind}.pth'), str(tmp_path / 'ran')
  if kind != 'missing':
    write_unloadable(kind, path, marker)
  out = tmp_path / 'out'
  code, stdout, err = run(capsys, f'--checkpoint={path}', '--config=tiny', f'--out={out}')
  assert code == 2
  line = one_line(err)
  assert path in line
  assert line.startswith('DataNotFoundError' if kind == 'missing' else 'ConversionError')
  assert 'weights_only=False' not in stdout + err
  assert not os.path.exists(marker) and not os.path.exists(out)


def test_weights_that_do_not_fit_the_config_are_refused(capsys, tmp_path):
  ae, _ = published_files(tmp_path, configs.get('tiny'))
  out = tmp_path / 'out'
  code, _, err = run(capsys, f'--checkpoint={ae}', '--config=tiny', '--config.model.nf=16',
                     f'--out={out}')
  assert code == 2
  line = one_line(err)
  assert line.startswith('ConversionError: content_encoder: ') and 'has shape' in line
  assert not os.path.exists(out)
