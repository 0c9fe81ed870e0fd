"""A value of named fields, for the modules on the start path of ``hgrun run``.

``dataclasses`` imports ``inspect`` (with ``ast``, ``dis`` and ``tokenize``), ~10 ms that every
``hgrun run`` would pay before its first request (issue 11); a frozen dataclass's ``__init__`` is
also slower than a plain one, which matters for the protocol's per-frame events. A
:class:`Record` is a class with ``__slots__`` and its own ``__init__``: this base gives it what a
frozen dataclass gives besides, equality, a hash and a repr, all from ``__slots__`` (in order).
Its fields are set once in ``__init__`` and never changed: that is the contract the hash relies
on. Pure, and imports nothing.
"""

from __future__ import annotations


class Record:
    """Equality (same class, equal fields), hash and repr from the subclass's ``__slots__``."""

    __slots__: tuple[str, ...] = ()

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._fields() == other._fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.__class__, self._fields()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{self.__class__.__name__}({shown})"
