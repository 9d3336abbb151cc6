"""An exported model: a trained run's networks in one self-describing directory.

  DIR/config.json      the run's config (as a workdir records it)
  DIR/variables.npz    the autoencoder's parameters and BatchNorm statistics and the pose
                       LSTM's parameters, one array per flat key:
                       autoencoder/params/content_encoder/c1/conv/kernel,
                       autoencoder/batch_stats/decoder/..., lstm/params/...
  DIR/pretrained.json  where it came from: the source run, its steps, the training time,
                       the command, recorded metrics (`mipae_jax.pretrained.export`)

No optimiser state and no critic: what inference (`runs.Run`) uses, a few MB for nf 16.
`runs.load_run(DIR)` reads such a directory as it reads a workdir. The arrays are plain
numpy (`np.load(..., allow_pickle=False)`), so reading one runs no code; a file whose keys,
shapes or dtypes differ from the networks the config builds is refused, naming the first
key that differs. This module knows the format only; `mipae_jax.pretrained` makes one
from a workdir and draws the demo's panel of it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os

import jax
import numpy as np
from flax import traverse_util

from mipae_jax import config_record, errors, train
from mipae_jax.metrics import safe_pickle

RECORD_FILE = 'pretrained.json'
VARIABLES_FILE = 'variables.npz'
FORMAT = 1  # Version of the directory's layout; a reader refuses any other.


def is_exported(path: str) -> bool:
  """Whether `path` is an exported model's directory (it holds `pretrained.json`)."""
  return os.path.isfile(os.path.join(path, RECORD_FILE))


def flatten(variables: dict) -> dict[str, np.ndarray]:
  """`{'autoencoder': {'params', 'batch_stats'}, 'lstm': params or None}` -> flat
  `{'autoencoder/params/...': array, 'lstm/params/...': array}` (host numpy)."""
  tree = {'autoencoder': variables['autoencoder']}
  if variables.get('lstm') is not None:
    tree['lstm'] = {'params': variables['lstm']}
  flat = traverse_util.flatten_dict(jax.device_get(tree), sep='/')
  return {k: np.asarray(v) for k, v in flat.items()}


def expected(config, with_lstm: bool) -> dict[str, jax.ShapeDtypeStruct]:
  """The flat keys, shapes and dtypes of the variables `config`'s networks take."""
  key = jax.random.key(0)
  params, stats, _ = jax.eval_shape(
      functools.partial(train.init_autoencoder_variables, config), key)
  tree = {'autoencoder': {'params': params, 'batch_stats': stats}}
  if with_lstm:
    lstm = jax.eval_shape(functools.partial(train.create_lstm_state, config), key)
    tree['lstm'] = {'params': lstm.lstm.params}
  return traverse_util.flatten_dict(tree, sep='/')


def mismatch(arrays: dict, want: dict) -> str | None:
  """The first key (in sorted order) where `arrays` differs from `want`, said in words."""
  for key in sorted(set(arrays) | set(want)):
    if key not in arrays:
      return f'{key} is missing (expected {_describe(want[key])})'
    if key not in want:
      return f'{key} is not a variable of the config\'s networks'
    a, w = arrays[key], want[key]
    if tuple(a.shape) != tuple(w.shape) or a.dtype != w.dtype:
      return f'{key} is {_describe(a)}, the config\'s networks take {_describe(w)}'
  return None


def _describe(x) -> str:
  return f'{np.dtype(x.dtype).name}{list(x.shape)}'


def file_digest(path: str) -> str:
  """SHA-256 of a file's bytes."""
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def write(out_dir: str, config, variables: dict, record: dict) -> dict:
  """Writes an exported model into the existing, empty folder `out_dir`.

  Args:
    config: the run's config (written as its `config.json`).
    variables: as `runs.Run.variables` (the critic, if there, is left out).
    record: what `pretrained.json` says besides the format, the variables file, its
      digest and its parameter counts (added here).
  Returns:
    The record as written.
  """
  arrays = flatten(variables)
  problem = mismatch(arrays, expected(config, variables.get('lstm') is not None))
  if problem is not None:  # A bug of the caller: the run's own variables must fit.
    raise ValueError(f'the variables do not fit the config: {problem}')
  config_record.record_config(out_dir, config)
  path = os.path.join(out_dir, VARIABLES_FILE)
  np.savez_compressed(path, **arrays)
  counts = {}
  for key, a in arrays.items():
    group = '/'.join(key.split('/')[:2])  # autoencoder/params, autoencoder/batch_stats, ...
    counts[group] = counts.get(group, 0) + int(a.size)
  record = {'format': FORMAT, **record, 'variables_file': VARIABLES_FILE,
            'variables_sha256': file_digest(path), 'num_values': counts}
  with open(os.path.join(out_dir, RECORD_FILE), 'w') as f:
    f.write(json.dumps(record, indent=2, sort_keys=True) + '\n')
  return record


def read_record(path: str) -> dict:
  """`DIR/pretrained.json`; NotARunError if absent, DataError if unreadable."""
  file = os.path.join(path, RECORD_FILE)
  if not os.path.isfile(file):
    raise errors.NotARunError(
        f'{file} not found: {path} is not an exported model (mipae-export writes one).')
  try:
    with open(file) as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.DataError(f'{file} cannot be read ({errors.first_line(str(e))}): export '
                           'the model again with mipae-export.') from e
  if not isinstance(record, dict) or record.get('format') != FORMAT:
    found = record.get('format') if isinstance(record, dict) else record
    raise errors.DataError(
        f'{file} is not an exported model of format {FORMAT} (found format {found!r}): '
        'export it again with this version\'s mipae-export.')
  return record


def read(path: str):
  """An exported model's `(config, variables, record)`; `variables` as `runs.Run` holds
  them (`'critic'` None; `'lstm'` None when none was exported).

  Raises:
    NotARunError: no `pretrained.json` or no variables file.
    DataError: the variables file is not a plain .npz, was changed after export, or its
      keys, shapes or dtypes differ from the config's networks (the first key is named).
  """
  record = read_record(path)
  config = config_record.load_config(path)
  file = os.path.join(path, record.get('variables_file', VARIABLES_FILE))
  if not os.path.isfile(file):
    raise errors.NotARunError(f'{file} not found: the exported model {path} lacks its '
                              'variables. Export it again with mipae-export.')
  arrays = safe_pickle.load_npz(file)
  with_lstm = record.get('lstm_step') is not None
  problem = mismatch(arrays, expected(config, with_lstm))
  if problem is not None:
    raise errors.DataError(f'{file} does not fit the networks of {path}/config.json: '
                           f'{problem}.')
  digest = record.get('variables_sha256')
  if digest is not None and file_digest(file) != digest:
    raise errors.DataError(
        f'{file} has changed since it was exported (its SHA-256 is not the one '
        f'{RECORD_FILE} records): export the model again with mipae-export.')
  tree = traverse_util.unflatten_dict(arrays, sep='/')
  tree = jax.device_put(tree)
  variables = {'autoencoder': tree['autoencoder'], 'critic': None,
               'lstm': tree['lstm']['params'] if with_lstm else None}
  return config, variables, record
