"""The object-store interface the rest of cosencfs is written against.

Everything above this module talks to an ``ObjectStore``; only the COS
modules of ``cosencfs.store`` (``cos`` and what it is made of) know about the
COS SDK.  User metadata is passed as a
``dict`` of lowercase names *without* the ``x-cos-meta-`` prefix, e.g.
``{"client-side-encryption-key": "...", "mode": "33188"}``; the store adds and
strips the prefix.

Ranges are Python-style: ``get(key, start, end)`` returns bytes
``[start, end)``.  Errors are the exceptions of ``cosencfs.errors``.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, runtime_checkable

from cosencfs.store.counters import RequestCounters

META_PREFIX = "x-cos-meta-"

#: COS limits (see docs/format.md).
MAX_KEY_BYTES = 850
MAX_USER_META_BYTES = 2048
MAX_PUT_BYTES = 5 * 1024**3
MIN_PART_BYTES = 1024**2
MAX_PART_BYTES = 5 * 1024**3
MAX_PARTS = 10_000
#: The largest object (and so file): 10,000 parts of 5 GiB,
#: 53,687,091,200,000 bytes = 48.83 TiB.
MAX_FILE_SIZE = MAX_PARTS * MAX_PART_BYTES
LIST_PAGE_MAX = 1000


@dataclass(slots=True, frozen=True)
class FileRange:
    """A body read from a local file: ``length`` bytes at ``offset``.

    Reopened on every attempt, so a retried request resends the same bytes.
    """

    path: str
    offset: int
    length: int


#: A request body: bytes in memory, or a range of a local file.
Body = bytes | bytearray | memoryview | FileRange


def body_length(body: Body) -> int:
    if isinstance(body, FileRange):
        return body.length
    return len(body)


@dataclass(slots=True, frozen=True)
class ObjectInfo:
    """What HEAD (or a listing, without metadata) says about an object."""

    key: str
    size: int
    etag: str  # without quotes
    last_modified: float  # seconds since the epoch
    metadata: Mapping[str, str] = field(default_factory=dict)
    content_type: str = ""
    #: False when the info came from a listing, which carries no user metadata.
    has_metadata: bool = True
    #: Standard headers set by other tools (Cache-Control, Content-Disposition,
    #: Content-Encoding, Content-Language, Expires), lowercase names; a copy
    #: that replaces metadata must send them again or they are lost.
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class ListPage:
    objects: Sequence[ObjectInfo]
    common_prefixes: Sequence[str]
    next_marker: str  # "" when not truncated
    truncated: bool


@dataclass(slots=True, frozen=True)
class PartInfo:
    part_number: int
    etag: str
    size: int


@dataclass(slots=True, frozen=True)
class UploadInfo:
    key: str
    upload_id: str
    initiated: float


class MetadataDirective(Enum):
    COPY = "Copy"
    REPLACED = "Replaced"


@runtime_checkable
class ObjectStore(Protocol):
    """Async access to one bucket.  Implementations retry transient failures."""

    @property
    def bucket(self) -> str: ...

    @property
    def counters(self) -> RequestCounters: ...

    async def head_bucket(self) -> None:
        """Raise NoSuchBucketError / AccessDeniedError unless the bucket is usable."""

    async def head(self, key: str) -> ObjectInfo: ...

    async def get(
        self, key: str, start: int = 0, end: int | None = None, *, if_match: str | None = None
    ) -> bytes:
        """Bytes ``[start, end)`` of the object (``end=None``: to the end).

        ``if_match`` (an ETag) makes the read fail with PreconditionFailedError
        when the object changed.
        """

    async def get_into(
        self,
        key: str,
        start: int,
        end: int,
        buffer: Callable[[int], memoryview],
        *,
        if_match: str | None = None,
    ) -> memoryview:
        """Bytes ``[start, end)`` of the object, received into a buffer of the caller's.

        ``buffer(n)`` is called (at most once, in the event loop) when the
        answer's length ``n`` is known and gives a writable view of at least
        ``n`` bytes: a large body is received straight into it, with no
        buffer of the store's own (cache/recvbuf.py reuses page-aligned
        ones).  The result is a view of that buffer, or of the store's own
        bytes when it did not call ``buffer``.  A call that fails or is
        cancelled may leave the buffer written to, and over https by a
        worker thread still running: the caller must not reuse it then.
        """

    async def put(
        self,
        key: str,
        body: Body,
        metadata: Mapping[str, str],
        *,
        content_type: str = "",
        if_none_match: bool = False,
    ) -> str:
        """Store the object; return its ETag."""

    async def list_objects(
        self, prefix: str = "", delimiter: str = "", marker: str = "", max_keys: int = 1000
    ) -> ListPage: ...

    def list_all(self, prefix: str = "", delimiter: str = "") -> AsyncIterator[ListPage]:
        """Every page of a listing, following ``next_marker`` (see :class:`ListPages`)."""

    async def delete(self, key: str) -> None:
        """Delete; deleting a missing key is not an error (as in COS)."""

    async def delete_many(self, keys: Sequence[str]) -> dict[str, StoreErrorInfo]:
        """Delete up to any number of keys (batched by 1000); return the failures."""

    async def copy(
        self,
        src_key: str,
        dst_key: str,
        *,
        metadata: Mapping[str, str] | None = None,
        content_type: str = "",
        headers: Mapping[str, str] | None = None,
        if_match: str | None = None,
        size: int | None = None,
    ) -> str:
        """Server-side copy; returns the new ETag.

        ``metadata=None`` keeps the source's (directive Copy), otherwise the
        object gets exactly ``metadata``, ``content_type`` and ``headers``
        (directive Replaced).  Objects over
        5 GB are copied with part copies.  ``size``, when known, saves a HEAD.
        """

    async def create_multipart(
        self,
        key: str,
        metadata: Mapping[str, str],
        *,
        content_type: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Start a multipart upload; return its upload id."""

    async def upload_part(self, key: str, upload_id: str, part_number: int, body: Body) -> str:
        """Upload one part; return its ETag."""

    async def upload_part_copy(
        self,
        key: str,
        upload_id: str,
        part_number: int,
        src_key: str,
        start: int,
        end: int,
        *,
        if_match: str | None = None,
    ) -> str:
        """Copy bytes ``[start, end)`` of ``src_key`` as a part; return its ETag."""

    async def list_parts(self, key: str, upload_id: str) -> list[PartInfo]: ...

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> str:
        """Complete with ``(part_number, etag)`` pairs; return the object's ETag."""

    async def abort_multipart(self, key: str, upload_id: str) -> None: ...

    async def list_uploads(self, prefix: str = "") -> list[UploadInfo]: ...


def completed_by(etag: str, parts: Sequence[tuple[int, str]]) -> bool:
    """Whether an object with ``etag`` is what completing ``parts`` made.

    A complete repeated after its answer was lost finds the upload gone and
    the object there.  A multipart ETag is the MD5 of the parts' binary MD5s,
    then ``-<number of parts>``: checking the digest, not only the suffix,
    keeps another multipart object at that key (an older version, one a
    concurrent writer made) from being taken for ours.  Part ETags that are
    not MD5s cannot be checked: then it is not ours (the caller uploads again).
    """
    try:
        digests = b"".join(bytes.fromhex(e.strip('"')) for _, e in parts)
    except ValueError:
        return False
    if len(digests) != 16 * len(parts):
        return False
    return etag.strip('"').lower() == f"{hashlib.md5(digests).hexdigest()}-{len(parts)}"


@dataclass(slots=True, frozen=True)
class StoreErrorInfo:
    """One key's failure in a batch delete."""

    code: str
    message: str


class _Lister(Protocol):
    async def list_objects(
        self, prefix: str = "", delimiter: str = "", marker: str = "", max_keys: int = 1000
    ) -> ListPage: ...


@dataclass(slots=True)
class ListPages:
    """The pages of one listing, each asked for when wanted (``list_all``).

    A class, not an async generator: callers stop at the first page that
    answers them (a directory is not empty), and trio warns of every
    generator dropped unfinished.
    """

    store: _Lister
    prefix: str
    delimiter: str
    #: Where the next page starts; None once the last page was given.
    marker: str | None = ""

    def __aiter__(self) -> ListPages:
        return self

    async def __anext__(self) -> ListPage:
        if self.marker is None:
            raise StopAsyncIteration
        page = await self.store.list_objects(self.prefix, self.delimiter, self.marker)
        self.marker = page.next_marker if page.truncated and page.next_marker else None
        return page
