"""Starts a new run from a kept checkpoint of another, for a config that only changes later steps.

  python -m experiments.branch_run --source=~/runs/long-mipae-s0 --step=20000 \
      --workdir=~/runs/anneal-mipae-s0 \
      --set=loss.fg_anneal_start=20000 --set=loss.fg_anneal_steps=5000
  mipae-train --config=study --workdir=~/runs/anneal-mipae-s0 --config.seed=0 \
      --config.loss.fg_anneal_start=20000 --config.loss.fg_anneal_steps=5000 \
      --config.train.ae_steps=40000 --config.train.ckpt_every=5000 \
      --config.train.keep_checkpoints=30

A lever that acts only from some step on (annealing `loss.fg_weight` from step S) gives
the same first S steps as the run without it: same seed, same batches, same updates. So a
run with the lever need not train them again: the new workdir gets the source's
autoencoder checkpoint at S (parameters, optimiser and critic states, step), its metrics
up to S, and the new config, and `mipae-train` resumes it from S like any run. The tool
refuses a change that would have acted before S (any field other than the resumable ones
and an anneal starting at S or later), so the branched workdir is the one a run of the
new config from scratch makes (XLA may round its first S steps differently in the last
bit: the anneal's weight is a traced value there).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil

from mipae_jax import checkpoint, config_record, configuration, errors
from mipae_jax.workdir import atomic_write_text

# Fields a branch may change besides the resumable ones: each acts only from its step on.
ANNEAL_FIELDS = ('loss.fg_anneal_start', 'loss.fg_anneal_steps')


def _set(config, assignment: str) -> str:
  field, sep, text = assignment.partition('=')
  if not sep:
    raise errors.UserError(f'--set={assignment!r}: expected FIELD=VALUE.')
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  *parents, leaf = field.split('.')
  node = config
  for p in parents:
    node = node[p]
  if leaf not in node:
    raise errors.UserError(f'--set: {field} is not a config field.')
  node[leaf] = value
  return field


def branch_config(source_config, step: int, assignments: list[str]):
  """The source's config with `assignments` applied; refused unless they leave every
  step before `step` as it was."""
  config = source_config.copy_and_resolve_references()
  changed = [_set(config, a) for a in assignments]
  configuration.validate(config)
  for field in changed:
    if config_record.is_allowed(field, config_record.RESUMABLE_FIELDS):
      continue
    if field not in ANNEAL_FIELDS:
      raise errors.UserError(
          f'--set: {field} changes training before step {step}; a branch may change '
          f'only {", ".join(ANNEAL_FIELDS)} and the resumable fields '
          f'({", ".join(config_record.RESUMABLE_FIELDS)}).')
  for c, name in ((source_config, 'the source'), (config, 'the branch')):
    if c.loss.fg_anneal_steps and c.loss.fg_anneal_start < step:
      raise errors.UserError(
          f'{name} anneals loss.fg_weight from step {c.loss.fg_anneal_start}, before the '
          f'branch step {step}: its first {step} steps differ; branch at or before '
          f'{c.loss.fg_anneal_start}.')
  return config


def branch(source: str, step: int, workdir: str, assignments: list[str]) -> None:
  source_config = config_record.load_config(source)
  config = branch_config(source_config, step, assignments)
  store = checkpoint.CheckpointStore(source, 'ae', enabled=False)
  try:
    steps = store.all_steps()
  finally:
    store.close()
  if step not in steps:
    raise errors.UserError(f'{source} keeps no autoencoder checkpoint at step {step}; '
                           f'it keeps {steps}.')
  if os.path.exists(workdir) and os.listdir(workdir):
    raise errors.UserError(f'{workdir} is not empty: branch into a new directory.')
  ae = os.path.join(workdir, 'checkpoints', 'ae')
  os.makedirs(ae)
  shutil.copytree(os.path.join(source, 'checkpoints', 'ae', str(step)),
                  os.path.join(ae, str(step)))
  atomic_write_text(os.path.join(ae, checkpoint.LAST_GOOD), f'{step}\n')  # As a save does.
  # The source's autoencoder curve up to the branch step, so the branch's starts at 0.
  with open(os.path.join(source, 'metrics.jsonl')) as f, \
       open(os.path.join(workdir, 'metrics.jsonl'), 'w') as out:
    for line in f:
      row = json.loads(line)
      if row.get('stage') == 'ae' and row.get('step', 0) <= step:
        out.write(line)
  dataset = os.path.join(source, config_record.DATASET_FILE)  # A prepared dataset's record.
  if os.path.exists(dataset):
    shutil.copy(dataset, os.path.join(workdir, config_record.DATASET_FILE))
  config_record.record_config(workdir, config)
  with open(os.path.join(workdir, 'branched_from.json'), 'w') as f:
    json.dump({'source': os.path.abspath(source), 'step': step, 'set': assignments}, f,
              indent=2)
  print(f'{workdir}: the autoencoder of {source} at step {step}, config with '
        f'{", ".join(assignments) or "no change"}. Resume it with mipae-train.')


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--source', required=True, help='the run to branch from')
  parser.add_argument('--step', type=int, required=True, help='its kept autoencoder step')
  parser.add_argument('--workdir', required=True, help='the new run (empty or absent)')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='a config change (repeatable)')
  a = parser.parse_args(argv)
  try:
    branch(os.path.expanduser(a.source), a.step, os.path.expanduser(a.workdir), a.set)
  except errors.UserError as e:
    raise SystemExit(f'branch_run: {e}') from None


if __name__ == '__main__':
  main()
