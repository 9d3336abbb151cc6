"""Reading weight files without running their code.

  tree = safe_pickle.load('weights/alexnet.ckpt')   # nested dicts of numpy arrays
  arrays = safe_pickle.load_npz('weights.npz')       # {name: array}, allow_pickle=False

`pickle.load` calls whatever the file names (`os.system`, `subprocess.Popen`, ...), so a
weight file from someone else is read with an unpickler whose `find_class` admits only
the numpy functions and types that rebuild an array (`_reconstruct`, `_frombuffer`,
`ndarray`, `dtype`, `scalar`, under both `numpy.core` (numpy 1 pickles) and `numpy._core`
(numpy 2) names) and, for pickle protocols 0-2, `_codecs.encode` of latin-1 text (how
those protocols write bytes). Dicts, lists, tuples, str, bytes, int, float, bool and None
have their own opcodes and need no global. A file naming any other global is refused with
one line naming the file and the global, before anything it names is looked up: no
module is imported and no code from the file runs.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping

import numpy as np

from mipae_jax import errors

# (module, name) -> the object it stands for. numpy 1 pickles arrays as
# `numpy.core.multiarray._reconstruct`; numpy 2 moved it to `numpy._core` and warns on
# `numpy.core`, so both names resolve to numpy 2's functions directly.
_core = np._core  # noqa: SLF001 - the only place numpy 2 keeps these functions.
_ALLOWED = {}
for _prefix in ('numpy.core', 'numpy._core'):
  _ALLOWED.update({
      (f'{_prefix}.multiarray', '_reconstruct'): _core.multiarray._reconstruct,
      (f'{_prefix}.multiarray', 'scalar'): _core.multiarray.scalar,
      (f'{_prefix}.numeric', '_frombuffer'): _core.numeric._frombuffer,
  })


def _latin1_bytes(text: str, encoding: str = 'latin1') -> bytes:
  # Pickle protocols 0-2 write bytes (an array's data) as `_codecs.encode(text, 'latin1')`;
  # only that encoding is admitted, so no other codec module gets looked up.
  if encoding not in ('latin1', 'latin-1') or not isinstance(text, str):
    raise pickle.UnpicklingError(f'_codecs.encode with encoding {encoding!r}')
  return text.encode('latin1')


_ALLOWED.update({('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype,
                 ('_codecs', 'encode'): _latin1_bytes})


class UnsafePickleError(errors.DataError):
  """A pickled file names something other than numpy arrays and plain containers."""


class _Restricted(pickle.Unpickler):
  """An Unpickler whose globals are `_ALLOWED` only; `name` is the file for messages."""

  def __init__(self, file, name: str):
    super().__init__(file)
    self._name = name

  def find_class(self, module, name):
    # Looked up in the table, never imported: a disallowed global is refused before its
    # module is imported (importing can itself run code).
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise UnsafePickleError(
          f'{self._name}: refused to unpickle global {module}.{name}: only numpy arrays, '
          'dicts, lists, tuples, str, numbers, bool and None are read from weight '
          'files (no code in the file runs).') from None

  def persistent_load(self, pid):
    raise UnsafePickleError(f'{self._name}: refused to unpickle a persistent id '
                            f'({str(pid)[:60]!r}): not a plain pickle of numpy arrays.')


def loads(data: bytes, name: str = '<bytes>'):
  """The object pickled in `data`, read as `load` reads a file; `name` for messages."""
  return _load(io.BytesIO(data), name)


def load(path: str | os.PathLike):
  """The object pickled in the file at `path`: numpy arrays in dicts, lists and tuples.

  Raises:
    DataNotFoundError: no file at `path`.
    UnsafePickleError: the file names a global other than numpy's array rebuilders (the
      message names the file and the global); nothing it names was imported or called.
    DataError: the file is not a readable pickle (empty, truncated, random bytes).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise errors.DataNotFoundError(f'weight file {path} not found (looked from '
                                   f'{os.getcwd()}).')
  with open(path, 'rb') as f:
    return _load(f, path)


def _load(f, name: str):
  try:
    return _Restricted(f, name).load()
  except UnsafePickleError:
    raise
  except Exception as e:  # noqa: BLE001 - random bytes raise anything from KeyError up.
    detail = errors.first_line(str(e), 160) or 'the file ends early (a truncated download?)'
    raise errors.DataError(f'{name} is not a readable pickle of numpy arrays '
                           f'({type(e).__name__}: {detail}).') from None


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Every array of the `.npz` at `path`, read with `allow_pickle=False` (an object array,
  which would unpickle, is refused like a damaged file).

  Raises:
    DataError: not a readable .npz of arrays (naming a Git LFS pointer as one).
  """
  path = os.fspath(path)
  try:
    with np.load(path, allow_pickle=False) as npz:
      return {k: npz[k] for k in npz.files}
  except (OSError, ValueError, EOFError) as e:
    with open(path, 'rb') as f:
      head = f.read(64)
    hint = (' It is a Git LFS pointer: run `git lfs pull` to fetch the file itself.'
            if head.startswith(b'version https://git-lfs') else '')
    raise errors.DataError(f'{path} is not a readable .npz of arrays '
                           f'({errors.first_line(str(e))}).{hint}') from e


def check_arrays(flat: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]],
                 what: str, owner: str, source: str) -> None:
  """Refuses `flat` ({name: array}, read from `source`) unless it holds exactly the
  arrays `shapes` names, each of its shape.

  Raises:
    DataError: `SOURCE: not WHAT weights (missing [...], unexpected [...])`, or
      `SOURCE: NAME has shape S, OWNER needs T.`
  """
  missing = [k for k in shapes if k not in flat]
  extra = [k for k in flat if k not in shapes]
  if missing or extra:
    raise errors.DataError(
        f'{source}: not {what} weights (missing {missing[:3]}, unexpected '
        f'{extra[:3]}{" ..." if len(missing) + len(extra) > 6 else ""}).')
  for k, shape in shapes.items():
    if tuple(np.shape(flat[k])) != tuple(shape):
      raise errors.DataError(f'{source}: {k} has shape {tuple(np.shape(flat[k]))}, {owner} '
                             f'needs {tuple(shape)}.')
