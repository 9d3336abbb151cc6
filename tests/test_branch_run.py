"""experiments/branch_run.py: a run started from another's kept checkpoint for a config
that changes only later steps (an anneal of loss.fg_weight) is the run that config makes
from scratch; a change that would act earlier is refused."""

import json
import os

import jax
import numpy as np
import pytest

from experiments import branch_run
from mipae_jax import config_record, errors, pipeline, workdir
from mipae_jax.configs import tiny

ANNEAL = ['loss.fg_anneal_start=1', 'loss.fg_anneal_steps=1']


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """A tiny run with lit pixels weighing 10x, one autoencoder step, checkpointed."""
  path = str(tmp_path_factory.mktemp('source'))
  config = tiny.get_config()
  config.loss.fg_weight = 10.0
  config.train.ae_steps = 1
  workdir.prepare(path)
  config_record.record_config(path, config)
  pipeline.train_autoencoder(config, path)
  return path


def test_a_branch_resumes_into_the_run_its_config_makes_from_scratch(source, tmp_path):
  dst = str(tmp_path / 'branch')
  branch_run.main([f'--source={source}', '--step=1', f'--workdir={dst}',
                   *(f'--set={a}' for a in ANNEAL)])
  config = config_record.load_config(dst)
  assert (config.loss.fg_anneal_start, config.loss.fg_anneal_steps) == (1, 1)
  assert config.loss.fg_weight == 10.0
  with open(os.path.join(dst, 'branched_from.json')) as f:
    assert json.load(f)['step'] == 1
  with open(os.path.join(dst, 'metrics.jsonl')) as f:
    assert [json.loads(line)['step'] for line in f] == [1]  # The source's step.
  config.train.ae_steps = 3
  branched = pipeline.train_autoencoder(config, dst)
  assert branched.steps_run == 2  # Resumed at the source's step 1.
  scratch = pipeline.train_autoencoder(config, str(tmp_path / 'scratch')).state
  # Step 0 ran with the constant weight in the source and a traced 10.0 from scratch:
  # XLA may round the two programs differently in the last bit, nothing more.
  for a, b in zip(jax.tree.leaves(branched.state), jax.tree.leaves(scratch), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  with open(os.path.join(dst, 'metrics.jsonl')) as f:
    weights = [json.loads(line).get('fg_weight') for line in f]
  assert weights == [None, 10.0, 1.0]  # Steps 1 (the source's), 2, 3.


@pytest.mark.parametrize('assignments, step, match', [
    (['loss.beta=0.1'], 1, 'loss.beta changes training before step 1'),
    (['loss.fg_anneal_start=0', 'loss.fg_anneal_steps=5'], 1, 'before the branch step 1'),
    ([], 7, 'keeps no autoencoder checkpoint at step 7'),
    (['loss.no_such=1'], 1, 'loss.no_such is not a config field'),
    (['loss.fg_anneal_steps=-2'], 1, 'loss.fg_anneal_steps'),
])
def test_a_branch_that_would_change_earlier_steps_is_refused(source, tmp_path, assignments,
                                                             step, match):
  dst = tmp_path / 'branch'
  with pytest.raises(SystemExit, match=match):
    branch_run.main([f'--source={source}', f'--step={step}', f'--workdir={dst}',
                     *(f'--set={a}' for a in assignments)])
  assert not dst.exists()  # Refused before anything is written.


def test_a_branch_into_a_used_directory_is_refused(source, tmp_path):
  (tmp_path / 'used').mkdir()
  (tmp_path / 'used' / 'notes.txt').write_text('mine')
  with pytest.raises(errors.UserError, match='is not empty'):
    branch_run.branch(source, 1, str(tmp_path / 'used'), ANNEAL)
  assert (tmp_path / 'used' / 'notes.txt').read_text() == 'mine'
