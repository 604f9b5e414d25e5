"""MetaMap: an object's metadata held compactly (one string of values, shared key tuples).

Every file a mount has written or HEADed keeps its object's metadata (the
envelope, the cosfs attributes, the integrity tags: about a dozen fields) for
as long as its inode lives: 100,000 files in a directory are 100,000 of them.
As a dict of str that is ~1.4 KB a file (the dict's table, one str object per
value); a ``MetaMap`` is one str holding the values and a shape shared by
every object with the same field names (the names, and the values of the
first such object: a value equal to the shape's is held as one mark):
~300 bytes.

A ``MetaMap`` is read-only (a ``Mapping``); ``dict(m)`` gives a dict to change.
Values holding the separator or the mark (NUL, \\x01: control characters,
which HTTP headers cannot carry) are not packed: :func:`pack` keeps such
metadata as a dict.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

_SEP = "\0"
#: Stands for a value equal to its shape's (below); a value holding it is not packed.
_SAME = "\x01"
#: Distinct name tuples shared (metadata names are few; a bucket writer could
#: make many, so beyond this each map keeps a shape of its own).
_MAX_SHAPES = 512


class _Shape:
    """Field names, and the values of the first map packed with them.

    Much of an object's metadata is the same for every object a mount writes
    (the format version, the wrap, the master key's id and check value, the
    owner, often the mode): a value equal to the shape's is held as one
    character (issue 18: ~50 bytes less per file).
    """

    __slots__ = ("names", "values")

    def __init__(self, names: tuple[str, ...], values: tuple[str, ...]) -> None:
        self.names = names
        self.values = values


_SHAPES: dict[tuple[str, ...], _Shape] = {}


class MetaMap(Mapping[str, str]):
    """Read-only metadata: names (and common values) in a shared shape, values in one string."""

    __slots__ = ("_blob", "_shape")

    def __init__(self, shape: _Shape, blob: str) -> None:
        self._shape = shape
        self._blob = blob

    def __getitem__(self, name: str) -> str:
        names = self._shape.names
        try:
            i = names.index(name)
        except ValueError:
            raise KeyError(name) from None
        v = self._blob.split(_SEP)[i] if len(names) > 1 else self._blob
        return self._shape.values[i] if v == _SAME else v

    def __contains__(self, name: object) -> bool:
        return name in self._shape.names

    def __iter__(self) -> Iterator[str]:
        return iter(self._shape.names)

    def __len__(self) -> int:
        return len(self._shape.names)

    def to_dict(self) -> dict[str, str]:
        shape = self._shape
        if not shape.names:
            return {}
        values = self._blob.split(_SEP) if len(shape.names) > 1 else [self._blob]
        return {
            n: d if v == _SAME else v
            for n, d, v in zip(shape.names, shape.values, values, strict=True)
        }

    def __repr__(self) -> str:
        # (Names only: values may be secrets' wraps.)
        return f"MetaMap({sorted(self._shape.names)})"


def pack(meta: Mapping[str, str]) -> Mapping[str, str]:
    """``meta`` held compactly (a ``MetaMap``), or as a dict if a value holds NUL or \\x01."""
    if isinstance(meta, MetaMap):
        return meta
    values = tuple(meta.values())
    if any(_SEP in v or _SAME in v for v in values):
        return dict(meta)
    names = tuple(meta)
    shape = _SHAPES.get(names)
    if shape is None:
        shape = _Shape(names, values)
        if len(_SHAPES) < _MAX_SHAPES:
            _SHAPES[names] = shape
    common = shape.values
    # (A one-character value is held as itself: the mark would be no shorter.)
    blob = _SEP.join(
        _SAME if len(v) > 1 and v == d else v for v, d in zip(values, common, strict=True)
    )
    return MetaMap(shape, blob)


def split(meta: Mapping[str, str]) -> tuple[object, object]:
    """``meta`` packed, as two references a holder keeps in its own slots
    (no ``MetaMap`` object: 48 bytes a file less, issue 18); :func:`join`
    gives it back."""
    m = pack(meta)
    if isinstance(m, MetaMap):
        return m._shape, m._blob
    return None, m


def join(shape: object, blob: object) -> Mapping[str, str]:
    """The read-only metadata :func:`split` gave ``shape`` and ``blob`` for."""
    if isinstance(shape, _Shape) and isinstance(blob, str):
        return MetaMap(shape, blob)
    if isinstance(blob, dict):
        return blob
    raise TypeError("not a split metadata map")


def unpack(meta: Mapping[str, str]) -> dict[str, str]:
    """A new dict of ``meta`` (packed or not)."""
    return meta.to_dict() if isinstance(meta, MetaMap) else dict(meta)
