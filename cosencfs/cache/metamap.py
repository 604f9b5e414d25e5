"""MetaMap: an object's metadata held compactly (one string of values, shared key tuples).

Every file a mount has written or HEADed keeps its object's metadata (the
envelope, the cosfs attributes, the integrity tags: about a dozen fields) for
as long as its inode lives: 100,000 files in a directory are 100,000 of them.
As a dict of str that is ~1.4 KB a file (the dict's table, one str object per
value); a ``MetaMap`` is one str holding the values and a tuple of the names,
shared by every object with the same field names: ~500 bytes.

A ``MetaMap`` is read-only (a ``Mapping``); ``dict(m)`` gives a dict to change.
Values holding the separator (NUL, which HTTP headers cannot carry) are not
packed: :func:`pack` keeps such metadata as a dict.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

_SEP = "\0"
#: Distinct name tuples shared (metadata names are few; a bucket writer could
#: make many, so beyond this each map keeps its own tuple).
_MAX_SHAPES = 512
_SHAPES: dict[tuple[str, ...], tuple[str, ...]] = {}


class MetaMap(Mapping[str, str]):
    """Read-only metadata: names in a shared tuple, values in one string."""

    __slots__ = ("_blob", "_names")

    def __init__(self, names: tuple[str, ...], blob: str) -> None:
        self._names = names
        self._blob = blob

    def __getitem__(self, name: str) -> str:
        try:
            i = self._names.index(name)
        except ValueError:
            raise KeyError(name) from None
        return self._blob.split(_SEP)[i] if len(self._names) > 1 else self._blob

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def to_dict(self) -> dict[str, str]:
        if not self._names:
            return {}
        return dict(zip(self._names, self._blob.split(_SEP), strict=True))

    def __repr__(self) -> str:
        return f"MetaMap({sorted(self._names)})"  # (names only: values may be secrets' wraps)


def pack(meta: Mapping[str, str]) -> Mapping[str, str]:
    """``meta`` held compactly (a ``MetaMap``), or as a dict if a value holds NUL."""
    if isinstance(meta, MetaMap):
        return meta
    values = tuple(meta.values())
    if any(_SEP in v for v in values):
        return dict(meta)
    names = tuple(meta)
    shared = _SHAPES.get(names)
    if shared is None:
        if len(_SHAPES) < _MAX_SHAPES:
            _SHAPES[names] = names
        shared = names
    return MetaMap(shared, _SEP.join(values))


def unpack(meta: Mapping[str, str]) -> dict[str, str]:
    """A new dict of ``meta`` (packed or not)."""
    return meta.to_dict() if isinstance(meta, MetaMap) else dict(meta)
