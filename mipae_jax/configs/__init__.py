"""The packaged run configs, by name: `configs.get('dsprites:drnet')`.

Each module here defines `get_config(arg=None)` returning an `ml_collections.ConfigDict`;
`NAME:ARG` passes ARG to it (a loss variant for the paper's settings, `paper` for the
study). Every command line takes the same names (`--config=dsprites:drnet`), or the path
of a config file of the user's own (`--config=my_config.py:variant`).

  default   the paper's Moving dSprites defaults (every field a run reads)
  dsprites  the paper's Moving dSprites setting; variants: any loss (mipae, drnet, ...)
  mnist     the paper's Moving MNIST setting (needs data.path); variants as dsprites
  mpi3d     the paper's MPI3D-real setting (needs data.path); variants as dsprites
  study     two sprites at laptop scale (the MIPAE-vs-DRNET study); variant: paper
  demo      one sprite, minutes on a CPU (`make demo`)
  tiny      32x32, a few steps: tests and smoke runs
"""

from __future__ import annotations

import importlib
import os

import ml_collections

NAMES = ('default', 'dsprites', 'mnist', 'mpi3d', 'study', 'demo', 'tiny')
DIR = os.path.dirname(os.path.abspath(__file__))


def names() -> tuple[str, ...]:
  """The packaged configs' names."""
  return NAMES


def path(name: str) -> str:
  """The file of packaged config `name` (for tools that take a config file)."""
  _check(name)
  return os.path.join(DIR, f'{name}.py')


def _check(name: str) -> None:
  if name not in NAMES:
    import difflib
    close = difflib.get_close_matches(name, NAMES, n=1)
    hint = f' Did you mean {close[0]!r}?' if close else ''
    raise ValueError(f'no packaged config {name!r}: expected one of {", ".join(NAMES)}, '
                     f'optionally with :VARIANT (e.g. dsprites:drnet), or a config file path.'
                     + hint)


def get(spec: str) -> ml_collections.ConfigDict:
  """The config `NAME` or `NAME:ARG`, e.g. `get('tiny')`, `get('dsprites:drnet')`."""
  name, _, arg = spec.partition(':')
  _check(name)
  module = importlib.import_module(f'{__name__}.{name}')
  return module.get_config(arg or None)

