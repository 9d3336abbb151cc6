"""One registry of named choices: the loss variants, the architectures and the datasets.

  VARIANTS = Registry('config.loss.name')
  VARIANTS.register('mipae', Variant(...))
  VARIANTS.lookup(config.loss.name)  # ValueError naming the field and the known names.

A name registered twice is refused: silently replacing a built-in (or another
extension's) entry would change what an existing config means.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Generic, TypeVar

T = TypeVar('T')


class Registry(MutableMapping, Generic[T]):
  """Name -> entry for one config field (`field`, e.g. 'config.model.arch')."""

  def __init__(self, field: str):
    self.field = field
    self._entries: dict[str, T] = {}

  def register(self, name: str, entry: T) -> T:
    """Makes `entry` selectable as `field = name`; refuses a name already taken."""
    self[name] = entry
    return entry

  def lookup(self, name: str) -> T:
    """The entry for `name`; ValueError naming the field and the known names."""
    if name not in self._entries:
      raise ValueError(f'{self.field} must be one of {tuple(self._entries)}; got {name!r}.')
    return self._entries[name]

  def __setitem__(self, name: str, entry: T) -> None:
    if not isinstance(name, str) or not name:
      raise ValueError(f'{self.field}: a registered name must be a non-empty string; '
                       f'got {name!r}.')
    if name in self._entries:
      raise ValueError(f'{self.field} {name!r} is already registered; pick another name '
                       f'(the registered ones: {tuple(self._entries)}).')
    self._entries[name] = entry

  def __getitem__(self, name: str) -> T:
    return self._entries[name]

  def __delitem__(self, name: str) -> None:
    del self._entries[name]

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def __repr__(self) -> str:
    return f'Registry({self.field!r}, {tuple(self._entries)})'
