"""Dirty file content in the cache: an append-only log of AES-GCM records.

Every write appends records to the layer's log file: a 24-byte header (kind,
file offset, length) and the plaintext sealed with AES-256-GCM under the
layer's own cache key, with a fresh random nonce per record and the header
and the layer id as associated data.  Nothing is ever rewritten in place, so
two snapshots of the cache directory never hold two ciphertexts of one
(key, counter block): rewriting a range appends a new record under a new
nonce, and a :class:`~cosencfs.cache.segments.SegmentMap` says which record
holds the newest bytes of each range.  Truncates are records too, so the
log replays to the same state after a crash.

A layer that is not the whole file reads its holes from what lies
``below`` it: an older layer still being uploaded, or the remote object the
file started from (``source``), up to ``limit``; beyond that, zeros.

A file written front to back (``cp``, ``dd``, a small file from start to
close) takes a shorter road: while every write appends at the end of what
the layer holds, its bytes go straight into the upload copy under the new
object's data key (``direct``), each range encrypted once, and the upload
sends that copy as it is.  The first write that is not such an append
*burns* that key: the direct copy stays as storage for the bytes already in
it, that key is never used again, and the upload is produced afresh under a
new key from the direct bytes and the log (cosencfs/cache/assemble.py).

States and the lock that guards them are described in docs/concurrency.md.
"""

from __future__ import annotations

import os
import struct
from enum import Enum
from typing import Protocol

import trio

from cosencfs.cache.content import ObjectContent, Source, pwrite_all
from cosencfs.cache.segments import RecordRef, SegmentMap
from cosencfs.crypto.ctr import (
    KEY_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
    DataKey,
    RecordSealer,
    RecordTagError,
)
from cosencfs.errors import CacheIntegrityError

#: Plaintext bytes per record at most: a read decrypts whole records, so this
#: bounds the work a small read does on top of its own bytes.
RECORD_MAX = 64 * 1024

_MAGIC = b"CEFL"
_HEADER = struct.Struct(">4sB3xQI4x")
HEADER_SIZE = _HEADER.size
OVERHEAD = HEADER_SIZE + NONCE_SIZE + TAG_SIZE
_AAD_LABEL = b"cosencfs-log-v1\0"


class RecordKind(Enum):
    DATA = 1
    TRUNCATE = 2


_DATA = RecordKind.DATA.value


class LayerState(Enum):
    """Where a dirty layer is in its life (docs/concurrency.md)."""

    #: Takes writes (above ``sealed_upto``, once a streamed upload has begun).
    OPEN = "open"
    #: Immutable: sealed for an upload, or frozen under a newer layer.
    SEALED = "sealed"
    #: Its content is in COS, or nobody needs it; the log goes once unpinned.
    RETIRED = "retired"


class Abandonable(Protocol):
    def abandon(self) -> None: ...


def new_cache_key() -> bytes:
    return os.urandom(KEY_SIZE)


class DirtyLayer:
    """One version of a file's content not yet in COS, as a log of records."""

    __slots__ = (
        "_aad_prefix",
        "_sealer",
        "below",
        "burned",
        "cache_key",
        "copy_dk",
        "direct",
        "direct_end",
        "direct_envelope",
        "envelope",
        "fd",
        "limit",
        "lock",
        "log_size",
        "object_dk",
        "owner",
        "path",
        "pins",
        "sealed_upto",
        "segments",
        "size",
        "source",
        "staged",
        "state",
        "stream",
        "uploading",
        "vid",
        "wrapped_key",
    )

    def __init__(
        self,
        vid: str,
        path: str,
        cache_key: bytes,
        *,
        size: int,
        limit: int,
        below: DirtyLayer | None,
        source: Source | None,
        create: bool = True,
    ) -> None:
        self.vid = vid
        self.path = path
        self.cache_key = cache_key
        self._aad_prefix = _AAD_LABEL + vid.encode("ascii")
        #: The cache key's AES-GCM context, made on the first record sealed or read.
        self._sealer: RecordSealer | None = None
        self.size = size
        self.limit = limit
        self.below = below
        self.source = source
        # A new layer's log is made on its first record: most files are
        # written front to back and never need one (their direct copy does).
        self.fd = -1 if create else os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        #: Bytes of the log that hold complete records (appends go here).
        self.log_size = 0
        self.segments = SegmentMap()
        #: Bytes written front to back, once each, under the upload key
        #: (``direct.dk``); ``[0, direct_end)`` of it are the layer's bytes.
        self.direct: ObjectContent | None = None
        self.direct_end = 0
        #: The envelope of the direct copy's key (kept after a burn: the
        #: journal needs it to read those bytes after a crash).
        self.direct_envelope: dict[str, str] = {}
        #: The direct copy's key may no longer be the upload key: something
        #: other than an append happened (or a crash hid what was written).
        self.burned = False
        self.state = LayerState.OPEN
        #: Writers, sealing and truncation take it (docs/concurrency.md).
        self.lock = trio.Lock()
        #: Readers and uploads that still read the log file.
        self.pins = 0
        #: Bytes below this were sealed into parts of a streamed upload.
        self.sealed_upto = 0
        #: The object's data key and envelope, drawn when sealing (or
        #: streaming) begins; None while the layer is only dirty.
        self.object_dk: DataKey | None = None
        self.envelope: dict[str, str] = {}
        self.stream: Abandonable | None = None
        #: The upload copy being produced under ``object_dk`` (held, not evictable).
        self.staged: ObjectContent | None = None
        #: The key the layer's one upload copy was made under (CacheManager.upload_copy).
        self.copy_dk: DataKey | None = None
        #: A commit is uploading this layer right now.
        self.uploading = False
        #: ``cache_key`` wrapped for the journal (made once, on first record).
        self.wrapped_key: str | None = None
        #: The inode whose content this is.
        self.owner: object | None = None

    def __repr__(self) -> str:
        return (
            f"DirtyLayer({self.vid}, {self.state.value}, size={self.size}, "
            f"log={self.log_size}, below={self.below.vid if self.below else None})"
        )

    def chain(self) -> list[DirtyLayer]:
        """This layer and every layer below it, newest first."""
        out: list[DirtyLayer] = []
        layer: DirtyLayer | None = self
        while layer is not None:
            out.append(layer)
            layer = layer.below
        return out

    @property
    def bottom(self) -> DirtyLayer:
        """The oldest layer of the chain: the one whose ``source`` counts."""
        return self.chain()[-1]

    @property
    def depth(self) -> int:
        return len(self.chain())

    def holds_layer(self, layer: DirtyLayer) -> bool:
        """Whether ``layer`` is this one or lies below it."""
        return any(x is layer for x in self.chain())

    def accepts(self, offset: int) -> bool:
        """Whether a write at ``offset`` (or a truncate to it) may change this layer."""
        return self.state is LayerState.OPEN and offset >= self.sealed_upto

    def appends_direct(self, offset: int) -> bool:
        """Whether a write at ``offset`` may go straight into the upload copy.

        Only an append to a layer that holds nothing but bytes written front
        to back: every byte of the direct copy is then encrypted exactly once.
        """
        return (
            not self.burned
            and self.below is None
            and self.source is None
            and offset == self.size == self.direct_end
            and len(self.segments) == 0
        )

    @property
    def streamable(self) -> bool:
        """Written front to back so far: parts can be uploaded as they fill."""
        return self.direct is not None and not self.burned and self.direct_end == self.size

    def burn(self) -> None:
        """The direct copy's key stops being the upload key (the caller holds ``lock``).

        Its bytes stay readable from it; a new key is drawn when sealing.
        """
        if self.direct is None or self.burned:
            return
        self.burned = True
        if self.staged is self.direct:
            self.staged = None
        self.object_dk = None
        self.envelope = {}
        if self.stream is not None:
            # Its parts went up under the burned key: that upload is void.
            self.stream.abandon()
            self.stream = None
            self.sealed_upto = 0

    # -- records (synchronous: callers decide on a worker thread) ------------------

    def _aad(self, header: bytes | memoryview) -> bytes:
        return self._aad_prefix + header

    @property
    def sealer(self) -> RecordSealer:
        """The cache key's AES-GCM context (made once: a layer seals and reads many records)."""
        sealer = self._sealer
        if sealer is None:
            sealer = self._sealer = RecordSealer(self.cache_key)
        return sealer

    def encode_write(
        self, offset: int, data: bytes | memoryview
    ) -> tuple[bytearray, list[RecordRef]]:
        """Seal ``data`` into records to append at ``log_size``; nothing is written yet.

        Each record is laid out and sealed in place in one buffer the size of
        the whole append (no copies of the plaintext or the sealed bytes).
        Pure computation: safe in a worker thread while the caller holds
        ``lock`` (so ``log_size`` cannot move).
        """
        view = memoryview(data)
        n = len(view)
        out = bytearray(n + -(-n // RECORD_MAX) * OVERHEAD)
        buf = memoryview(out)
        sealer = self.sealer
        refs = []
        pos = self.log_size
        at = 0
        for i in range(0, n, RECORD_MAX):
            length = min(RECORD_MAX, n - i)
            header = _HEADER.pack(_MAGIC, _DATA, offset + i, length)
            buf[at : at + HEADER_SIZE] = header
            end = at + OVERHEAD + length
            sealer.seal_into(buf[at + HEADER_SIZE : end], view[i : i + length], self._aad(header))
            refs.append(RecordRef(pos + at, offset + i, length))
            at = end
        return out, refs

    def encode_truncate(self, size: int) -> bytes:
        header = _HEADER.pack(_MAGIC, RecordKind.TRUNCATE.value, size, 0)
        out = bytearray(OVERHEAD)
        out[:HEADER_SIZE] = header
        self.sealer.seal_into(memoryview(out)[HEADER_SIZE:], b"", self._aad(header))
        return bytes(out)

    def append_write(self, offset: int, data: bytes | memoryview) -> tuple[list[RecordRef], int]:
        """Seal ``data`` into records and append them; ``apply_write`` makes them visible.

        The caller holds ``lock``; safe in a worker thread (``log_size`` and
        the segment map do not change here).
        """
        blob, refs = self.encode_write(offset, data)
        self.append(blob)
        return refs, len(blob)

    def append(self, blob: bytes | bytearray) -> None:
        """Write encoded records at the end of the log (the caller holds ``lock``)."""
        if self.fd == -2:
            raise CacheIntegrityError(f"cache log {self.vid} was closed")
        if self.fd < 0:
            flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_CREAT | os.O_EXCL
            self.fd = os.open(self.path, flags, 0o600)
        pwrite_all(self.fd, memoryview(blob), self.log_size)

    def apply_write(self, refs: list[RecordRef], blob_len: int) -> None:
        """Make appended records visible: in the event loop, no await in between."""
        for ref in refs:
            self.segments.put(ref.offset, ref.end, ref)
            self.size = max(self.size, ref.end)
        self.log_size += blob_len

    def apply_truncate(self, size: int, blob_len: int) -> None:
        self.segments.truncate(size)
        self.direct_end = min(self.direct_end, size)
        self.limit = min(self.limit, size)
        self.size = size
        self.log_size += blob_len

    def read_record(self, ref: RecordRef) -> bytes:
        """The verified plaintext of one data record."""
        n = HEADER_SIZE + NONCE_SIZE + ref.length + TAG_SIZE
        raw = os.pread(self.fd, n, ref.pos)
        if len(raw) != n:
            raise CacheIntegrityError(f"cache log {self.vid} is short at {ref.pos}")
        header = raw[:HEADER_SIZE]
        magic, kind, offset, length = _HEADER.unpack(header)
        if (magic, kind, offset, length) != (
            _MAGIC,
            RecordKind.DATA.value,
            ref.offset,
            ref.length,
        ):
            raise CacheIntegrityError(f"cache log {self.vid}: unexpected record at {ref.pos}")
        try:
            return self.sealer.open(memoryview(raw)[HEADER_SIZE:], self._aad(header))
        except RecordTagError:
            raise CacheIntegrityError(
                f"cache log {self.vid}: record at {ref.pos} does not verify "
                "(the cache directory was altered or damaged)"
            ) from None

    def replay(self, log_end: int) -> None:
        """Rebuild the segment map from the log's first ``log_end`` bytes (recovery).

        Headers are checked here; every data record is verified when its bytes
        are read (an upload reads all live ones), truncate records now.
        """
        pos = 0
        while pos < log_end:
            header = os.pread(self.fd, HEADER_SIZE, pos)
            if len(header) != HEADER_SIZE:
                raise CacheIntegrityError(f"cache log {self.vid} ends inside a record at {pos}")
            magic, kind, offset, length = _HEADER.unpack(header)
            end = pos + OVERHEAD + length
            if magic != _MAGIC or end > log_end or length > RECORD_MAX:
                raise CacheIntegrityError(f"cache log {self.vid}: no valid record at {pos}")
            if kind == RecordKind.DATA.value:
                self.segments.put(offset, offset + length, RecordRef(pos, offset, length))
            elif kind == RecordKind.TRUNCATE.value:
                body = os.pread(self.fd, NONCE_SIZE + TAG_SIZE, pos + HEADER_SIZE)
                try:
                    self.sealer.open(body, self._aad(header))
                except RecordTagError:
                    raise CacheIntegrityError(
                        f"cache log {self.vid}: record at {pos} does not verify"
                    ) from None
                self.segments.truncate(offset)
            else:
                raise CacheIntegrityError(f"cache log {self.vid}: unknown record kind at {pos}")
            pos = end
        self.log_size = log_end

    def close(self) -> None:
        self._sealer = None
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = -2  # closed: a later append must not make the file again
