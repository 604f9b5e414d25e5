"""What COS holds at an inode's key (``Remote``), held compactly.

Every file a mount knows keeps one (issue 18: 100,000 files in a
directory), so it is four slots: the metadata packed
(cosencfs/cache/metamap.py, its two parts in ``_shape`` and ``_blob``: ~1 KB
less per file than a dict), the standard headers (usually none), and
``_id``, one bytes object of the object's last-modified time, size, the
digest of stored metadata, flags and its ETag (an MD5 ETag as its 16
bytes): ~100 bytes less per file than an ETag, a float, a size and a
digest, each an object of its own.

``metadata`` gives a new dict on every read, so a caller's changes never
reach the inode (assign to change it); ``etag`` a str equal to the one
given.  A clean file's metadata need not be held at all (``store``): the
two metadata slots then hold the loader and the inode, ``check`` a keyed
digest of what was held, and each read of ``metadata`` gets it back from
the journal's attribute cache if the record still has that digest
(fs/metastore.py; None, and the attributes unknown again, when not).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, cast

from cosencfs.cache.metamap import join, pack, split, unpack

if TYPE_CHECKING:
    from cosencfs.fs.inode import Inode

#: last_modified, size, the stored metadata's digest, flags; then the ETag.
_HEAD = struct.Struct("<dqQB")
_LM = struct.Struct("<d")
_SIZE = struct.Struct("<q")
_CHECK = struct.Struct("<Q")
_SIZE_AT, _CHECK_AT, _FLAGS_AT = 8, 16, 24
#: The ETag is a single-part MD5's 16 bytes (else its text, UTF-8).
_MD5 = 1
#: The metadata is not held but loaded on use (``store``).
_STORED = 2


class MetaLoader(Protocol):
    """Where a ``Remote`` whose metadata is not held gets it back (fs/metastore.py)."""

    def load(self, node: Inode, remote: Remote) -> dict[str, str] | None: ...


class Remote:
    """What COS holds at the inode's key (see the module's text)."""

    __slots__ = ("_blob", "_headers", "_id", "_shape")

    def __init__(
        self,
        etag: str,
        size: int,
        last_modified: float,
        metadata: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        raw, flags = _compact_etag(etag)
        self._id = _HEAD.pack(last_modified, size, 0, flags) + raw
        self.metadata = metadata
        #: Standard headers other tools set (Cache-Control ...), kept on rewrites.
        self._headers = pack(headers) if headers else None

    def _with(self, at: int, packed: bytes) -> None:
        i = self._id
        self._id = i[:at] + packed + i[at + len(packed) :]

    @property
    def etag(self) -> str:
        i = self._id
        tail = i[_HEAD.size :]
        return tail.hex() if i[_FLAGS_AT] & _MD5 else tail.decode("utf-8", "surrogateescape")

    @etag.setter
    def etag(self, value: str) -> None:
        raw, md5 = _compact_etag(value)
        i = self._id
        flags = (i[_FLAGS_AT] & ~_MD5) | md5
        self._id = i[:_FLAGS_AT] + bytes((flags,)) + raw

    @property
    def size(self) -> int:
        return int(_SIZE.unpack_from(self._id, _SIZE_AT)[0])

    @size.setter
    def size(self, value: int) -> None:
        self._with(_SIZE_AT, _SIZE.pack(value))

    @property
    def last_modified(self) -> float:
        return float(_LM.unpack_from(self._id, 0)[0])

    @last_modified.setter
    def last_modified(self, value: float) -> None:
        self._with(0, _LM.pack(value))

    @property
    def metadata(self) -> dict[str, str] | None:
        """Envelope (and attribute) metadata; None when only a listing was seen."""
        blob = self._blob
        if blob is None:
            return None
        if self._id[_FLAGS_AT] & _STORED:
            return cast(MetaLoader, self._shape).load(cast("Inode", blob), self)
        return unpack(join(self._shape, blob))

    @metadata.setter
    def metadata(self, value: Mapping[str, str] | None) -> None:
        if value is None:
            self._shape = self._blob = None
        else:
            self._shape, self._blob = split(value)
        i = self._id
        if i[_FLAGS_AT] & _STORED:
            self._with(_FLAGS_AT, bytes((i[_FLAGS_AT] & ~_STORED,)))

    @property
    def packed_metadata(self) -> Mapping[str, str] | None:
        """The metadata as held (read-only; no copy of the values), or loaded."""
        blob = self._blob
        if blob is None or self._id[_FLAGS_AT] & _STORED:
            return self.metadata
        return join(self._shape, blob)

    @property
    def stored(self) -> bool:
        """The metadata is not held but loaded on each read (``store``)."""
        return bool(self._id[_FLAGS_AT] & _STORED)

    @property
    def check(self) -> int:
        """The digest ``store`` was given (what the loader checks a record against)."""
        return int(_CHECK.unpack_from(self._id, _CHECK_AT)[0])

    def store(self, node: Inode, loader: MetaLoader, check: int) -> None:
        """Hold no metadata any more: ``loader`` gives ``node``'s back on use.

        The caller checked that it does, for this object, and gives the
        digest of the metadata held (fs/metastore.py); assigning ``metadata``
        holds it again.
        """
        self._shape = loader
        self._blob = node
        i = self._id
        self._id = (
            i[:_CHECK_AT] + _CHECK.pack(check) + bytes((i[_FLAGS_AT] | _STORED,)) + i[_HEAD.size :]
        )

    @property
    def headers(self) -> dict[str, str]:
        return {} if self._headers is None else unpack(self._headers)

    def __repr__(self) -> str:
        return f"Remote({self.etag!r}, size={self.size}, last_modified={self.last_modified})"


def _compact_etag(etag: str) -> tuple[bytes, int]:
    """An ETag as held, and its flag: the 16 bytes of a single-part MD5 ETag
    (lowercase hex, what COS answers for a PUT), anything else its text."""
    if len(etag) == 32:
        try:
            raw = bytes.fromhex(etag)
        except ValueError:
            raw = b""
        if raw and raw.hex() == etag:
            return raw, _MD5
    return etag.encode("utf-8", "surrogateescape"), 0
