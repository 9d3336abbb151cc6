"""A run's records: its config (`WORKDIR/config.json`), with the refusal to resume a
workdir under another config, and the prepared dataset a tfds run trains on
(`WORKDIR/dataset.json`, `check_dataset_record`).

`record_config` writes the resolved config (atomically) when a run starts or resumes,
`load_config` reads it back;
`check_config` compares a requested config with the record, field by field, allowing
only the fields in `RESUMABLE_FIELDS` to differ. A record written before a field existed
is read at that field's old value (`configuration.ADDED_FIELDS`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import ml_collections

from mipae_jax import configuration, errors
from mipae_jax import workdir as workdir_lib

CONFIG_FILE = workdir_lib.CONFIG_FILE

# Config fields (dotted prefixes) that may change when a run is resumed: they set how
# long to train and how often to log, save and evaluate, not what a step computes
# (model.kernels: how a layer is computed, the same parameters and values either way).
RESUMABLE_FIELDS = (
    'model.kernels',
    'data.data_dir',  # Where a prepared dataset sits; the dataset itself is recorded.
    'train.ae_steps',
    'train.lstm_steps',
    'train.log_every',
    'train.ckpt_every',
    'train.keep_checkpoints',
    'train.profile_steps',
    'eval',
)


class ConfigMismatchError(errors.UserError, ValueError):
  """The workdir was created with a different config than the one requested."""


_DAMAGED_ADVICE = (
    "the run's config record is damaged (truncated?). Restore it from a copy; or move it "
    'aside (mv {path} {path}.damaged) and rerun mipae-train with the run\'s original '
    '--config and overrides: it records them anew and resumes from the checkpoints.')


def _config_dict(config) -> dict:
  """Plain, JSON round-tripped dict of a ConfigDict (tuples become lists, so saved and
  requested configs compare equal when they are)."""
  d = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
  return json.loads(json.dumps(d, default=str))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was started with (its `config.json`), with the fields added
  since it was recorded at the values it ran with (`configuration.ADDED_FIELDS`)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise errors.NotARunError(
        f'{path} not found: {workdir} is not a run directory made by mipae-train.')
  try:
    with open(path) as f:
      config = ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise errors.WorkdirError(
        f'{path} cannot be read ({errors.first_line(str(e))}): ' + _DAMAGED_ADVICE.format(
            path=path)) from e
  configuration.fill_added_fields(config)
  return config


def record_config(workdir: str, config) -> str:
  """Writes the resolved config to `workdir/config.json` (atomically); returns the path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  workdir_lib.atomic_write_text(
      path, json.dumps(_config_dict(config), indent=2, sort_keys=True) + '\n')
  return path


def is_allowed(field: str, allowed: Iterable[str]) -> bool:
  """Whether `field` (dotted) is one of `allowed` or under one of them."""
  return any(field == p or field.startswith(p + '.') for p in allowed)


def check_config(workdir: str, config, allowed: Iterable[str] = RESUMABLE_FIELDS
                 ) -> bool:
  """Refuses to resume `workdir` under a config other than the one it was made with.

  Fields under `allowed` (dotted prefixes) may differ. Returns True if the workdir had
  a recorded config (and it matches), False if it has none.
  Raises:
    ConfigMismatchError: listing every differing field as `field: saved -> requested`.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return False
  try:
    with open(path) as f:
      saved = dict(configuration.leaves(json.load(f)))
  except (OSError, ValueError) as e:
    raise ConfigMismatchError(
        f'{path} cannot be read ({errors.first_line(str(e))}): '
        + _DAMAGED_ADVICE.format(path=path)) from e
  for field, value in configuration.ADDED_FIELDS.items():  # Added since: the old value.
    saved.setdefault(field, value)
  requested = dict(configuration.leaves(_config_dict(config)))
  missing = '<absent>'
  diffs = []
  for field in sorted(set(saved) | set(requested)):
    a, b = saved.get(field, missing), requested.get(field, missing)
    if a != b and not is_allowed(field, allowed):
      diffs.append(f'  {field}: {a!r} -> {b!r}')
  if diffs:
    raise ConfigMismatchError(
        f'{workdir} was created with a different config ({path}); refusing to resume '
        f'it. Differing fields (saved -> requested):\n' + '\n'.join(diffs) +
        '\nUse a new --workdir for this config, or pass the same config (and '
        'overrides) as the original run. Fields that may change on resume: '
        + ', '.join(allowed) + '.')
  return True


DATASET_FILE = 'dataset.json'


def check_dataset_record(workdir: str, config) -> None:
  """Records which prepared dataset (name, version, split sizes) a tfds run trains on,
  and refuses (DataError) to go on with another one."""
  from mipae_jax.data import tfds_source
  current = tfds_source.record(config.data)
  path = os.path.join(workdir, DATASET_FILE)
  if os.path.exists(path):
    with open(path) as f:
      recorded = json.load(f)
    if recorded != current:
      raise errors.DataError(
          f'{workdir} was trained on the prepared dataset {recorded}, not on {current} '
          f'(config.data.tfds_name / data_dir). Point them at the dataset the run started '
          'with, or start a new workdir.')
    return
  workdir_lib.atomic_write_text(path, json.dumps(current, indent=2) + '\n')
