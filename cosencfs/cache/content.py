"""Clean copies of objects in the cache directory: the object's own ciphertext.

An :class:`ObjectContent` is a sparse cache file holding an object's bytes
exactly as COS stores them (its ciphertext, under its own data key) at the
same offsets, plus the set of byte ranges present.  Gaps are filled with
bytes fetched from COS, which are the same bytes every time, so a clean copy
never holds two ciphertexts of one (key, counter block).  Nothing a user
writes ever goes here: writes go to a dirty layer (cosencfs/cache/dirtylog.py),
and an upload produces a new clean copy under the new object's fresh key.

A plaintext object (no envelope, refused unless the mount allows it) is kept
under a throw-away key of its own, so the cache still holds only ciphertext.

Copies keep no descriptor of their own: one is opened when a read or write
of the copy needs it, and at most ``OPEN_IDLE`` idle ones stay open
(:class:`_Descriptors`), so a burst of 100,000 new files does not hold
100,000 descriptors (``EMFILE``).
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio

from cosencfs.cache.direct import DIRECT
from cosencfs.cache.direct import pwrite_all as pwrite_all  # noqa: PLC0414 - dirtylog imports it here
from cosencfs.cache.extents import Extents
from cosencfs.cache.metamap import pack
from cosencfs.crypto.ctr import DataKey, decrypt, encrypt, encrypt_into
from cosencfs.crypto.integrity import ChunkKey, VerifiedContent

#: Transcoding and zero-filling work in chunks this big (memory bound).
CHUNK = 4 * 1024 * 1024
#: Buffers this large are en/decrypted and written in a worker thread; for
#: smaller ones the thread hop would cost more than the work.
THREAD_THRESHOLD = 256 * 1024


@dataclass(slots=True, eq=False)
class Source:
    """A remote object whose bytes a clean copy (or a dirty layer) come from."""

    key: str
    etag: str
    #: The object's data key; None for a plaintext object (no envelope).
    dk: DataKey | None
    #: Bytes at or beyond ``limit`` are zeros (the file was truncated below it).
    limit: int
    #: The object's envelope metadata, to recover the key after a restart
    #: (held packed, read-only: cosencfs/cache/metamap.py).
    envelope: Mapping[str, str] = field(default_factory=dict)
    #: The object's verified chunk tags (None: untagged, or not checked):
    #: every fetched chunk is checked against them before it is stored.
    verified: VerifiedContent | None = None
    _chunk_key: ChunkKey | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.envelope = pack(self.envelope)

    @property
    def chunk_key(self) -> ChunkKey | None:
        """The key of the chunk tags, derived on the first fetch that checks them.

        Not at creation: every new file's clean copy has a source, and a
        derived key (an HMAC context, part of it native) per file uploaded
        was ~0.5 KB held for copies that are never fetched into.
        """
        if self._chunk_key is None and self.verified is not None and self.dk is not None:
            self._chunk_key = ChunkKey(self.dk)
        return self._chunk_key


#: Descriptors of idle copies kept open (the least recently used beyond go).
OPEN_IDLE = 256
_FLAGS = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW


class _Descriptors:
    """The open descriptors of cache copies, shared by the event loop and worker threads.

    A copy's descriptor is opened on use and counted in use while a read
    or write runs (``ObjectContent._fd``); only descriptors of copies no
    one is using are closed, least recently used first, so a descriptor
    is never closed (and its number reused) under a pread or pwrite.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: Copies with an open descriptor, least recently used first.
        self.open: OrderedDict[int, ObjectContent] = OrderedDict()

    def trim(self) -> None:
        """Close idle descriptors beyond ``OPEN_IDLE`` (the caller holds ``lock``)."""
        excess = len(self.open) - OPEN_IDLE
        if excess <= 0:
            return
        # Called on every use: only as far into the LRU order as it takes to
        # find ``excess`` idle ones (not a copy of all of them each time).
        idle = []
        for ident, v in self.open.items():
            if v.users == 0:
                idle.append(ident)
                if len(idle) == excess:
                    break
        for ident in idle:
            v = self.open.pop(ident)
            os.close(v.fd)
            v.fd = -1


_DESCRIPTORS = _Descriptors()
#: Directories of cache copies, each held once (see ``ObjectContent.path``).
_DIRS: dict[str, str] = {}


@dataclass(slots=True, eq=False)
class Inflight:
    start: int
    end: int
    done: trio.Event = field(default_factory=trio.Event)
    #: The read-ahead that fetches this speculatively, and may cancel it when
    #: its reader moves away; None once a reader waits for it, another
    #: read-ahead shares it, or its bytes have arrived (cosencfs/cache/fetch.py).
    owner: object | None = None
    #: Cancels the fetch (only while ``owner`` is set).
    scope: trio.CancelScope | None = None
    #: For a sequential reader: decrypted as it is stored and held in memory
    #: for the reader (cosencfs/cache/plainhold.py), written past the page cache.
    serve: bool = False
    #: Written past the page cache: read back rarely, or a little at a time
    #: (a whole-object fetch for a random reader; ``serve`` implies it).
    direct: bool = False


class ObjectContent:
    """The cache file of one object (or of one being produced for upload)."""

    __slots__ = (
        "_busy",
        "_dir",
        "_inflight",
        "_path",
        "account",
        "ahead",
        "discarded",
        "dk",
        "fd",
        "holds",
        "last_access",
        "owner",
        "pins",
        "plain",
        "present",
        "size",
        "source",
        "unread",
        "users",
        "vid",
    )

    def __init__(
        self,
        vid: str,
        path: str,
        dk: DataKey,
        size: int,
        source: Source | None,
        *,
        create: bool = True,
    ) -> None:
        self.vid = vid
        # Most copies sit in the cache's own data directory under their vid:
        # that directory is held once for all of them, and the path made
        # when a descriptor is opened (a path string per copy was ~120
        # bytes each for 20,000 copies, issue 18).
        head, tail = os.path.split(path)
        self._dir = _DIRS.setdefault(head, head) if len(_DIRS) < 64 else head
        self._path: str | None = None if tail == vid else path
        #: The key of the bytes in the file: the object's data key, or a
        #: throw-away key for a plaintext object.
        self.dk = dk
        self.size = size
        #: Where missing bytes come from; None while a copy is being produced
        #: for an upload (every byte is written by the producer).
        self.source = source
        self.present = Extents()
        #: Open only while in use or among the recently used (``_DESCRIPTORS``); -1: closed.
        self.fd = -1
        #: Reads and writes running on ``fd`` now (it is not closed under them).
        self.users = 0
        if create:
            flags = _FLAGS | os.O_CREAT | os.O_EXCL
            os.close(os.open(path, flags, 0o600))
        else:
            os.close(os.open(path, _FLAGS))  # (an error now, not at the first read)
        #: Readers and uploads using it right now (not evictable).
        self.pins = 0
        #: Reasons to keep it beyond eviction (being produced for an upload).
        self.holds = 0
        self._inflight: list[Inflight] | None = None
        self.last_access = trio.current_time()
        self.discarded = False
        #: The inode whose clean content this is (so eviction can tell it).
        self.owner: object | None = None
        #: The cache's running total of present bytes, kept exact by mark().
        self.account = [0]
        self._busy: list[tuple[int, int]] | None = None
        #: Read-ahead fetched for a sequential reader and not read yet: kept.
        self.ahead: tuple[int, int] | None = None
        #: Decrypted read-ahead not read yet, by start (cosencfs/cache/plainhold.py).
        self.plain: dict[int, bytes | memoryview] | None = None
        #: Produced by an upload and not read since (``touch``): evicted
        #: beyond a bound of its own (CacheManager.max_unread).
        self.unread = False

    @property
    def path(self) -> str:
        """The cache file's path."""
        return self._path if self._path is not None else os.path.join(self._dir, self.vid)

    @property
    def inflight(self) -> list[Inflight]:
        """Fetches into the copy running now (cosencfs/cache/fetch.py).

        This list and ``busy`` are made on first use (no await between the
        check and the assignment): most copies, every new file's once
        uploaded, are never fetched into nor read while held.
        """
        if self._inflight is None:
            self._inflight = []
        return self._inflight

    @property
    def busy(self) -> list[tuple[int, int]]:
        """Ranges being read right now (a multiset): never dropped (cache/evict.py)."""
        if self._busy is None:
            self._busy = []
        return self._busy

    @property
    def idle(self) -> bool:
        """No fetch into it and no read of it runs (without making the lists)."""
        return not self._inflight and not self._busy

    def __repr__(self) -> str:
        return f"ObjectContent({self.vid}, size={self.size}, present={self.present.total})"

    @property
    def limit(self) -> int:
        """Bytes below this can be fetched from the source."""
        return min(self.source.limit, self.size) if self.source is not None else 0

    @property
    def plaintext_source(self) -> bool:
        return self.source is not None and self.source.dk is None

    @property
    def complete(self) -> bool:
        return self.present.contains(0, self.size)

    @property
    def cached_bytes(self) -> int:
        return self.present.total

    def mark(self, start: int, end: int) -> None:
        """``[start, end)`` now holds valid ciphertext."""
        before = self.present.total
        self.present.add(start, end)
        self.account[0] += self.present.total - before

    def drop(self, start: int, end: int, punch: Callable[[int, int, int], None]) -> int:
        """Forget ``[start, end)`` and free its blocks (``punch(fd, offset, length)``).

        Only for a range nobody reads now (not ``busy``, not in flight): the
        caller decides in the event loop with no await in between.  Returns
        the bytes no longer present.
        """
        if self.discarded or not self.present.intersection(start, end):
            return 0
        with self._fd() as fd:
            punch(fd, start, end - start)
        before = self.present.total
        self.present.remove(start, end)
        gone = before - self.present.total
        self.account[0] -= gone
        return gone

    def touch(self) -> None:
        """Used now (eviction drops the least recently used copies first)."""
        self.last_access = trio.current_time()
        self.unread = False

    def close(self) -> None:
        self.plain = None
        with _DESCRIPTORS.lock:
            if not self.discarded:
                self.discarded = True
                if self.fd >= 0 and self.users == 0:
                    _DESCRIPTORS.open.pop(id(self), None)
                    os.close(self.fd)
                    self.fd = -1

    def _closed(self) -> bool:
        """(Read again after the yield: mypy would keep the earlier check.)"""
        return self.discarded

    @contextmanager
    def _fd(self) -> Iterator[int]:
        """The copy's descriptor, opened if need be, not closed while yielded."""
        d = _DESCRIPTORS
        with d.lock:
            if self.discarded:
                raise OSError(errno.EBADF, f"cache file {self.vid} was closed")
            if self.fd < 0:
                self.fd = os.open(self.path, _FLAGS)
            d.open[id(self)] = self
            d.open.move_to_end(id(self))
            self.users += 1
            d.trim()
            fd = self.fd
        try:
            yield fd
        finally:
            with d.lock:
                self.users -= 1
                if self._closed() and self.users == 0 and self.fd >= 0:
                    # Closed while in use: the descriptor goes with its last user.
                    d.open.pop(id(self), None)
                    os.close(self.fd)
                    self.fd = -1

    # -- data (synchronous: callers decide whether to run them in a thread) ------

    def read_plain(self, offset: int, length: int) -> bytes:
        """Decrypt ``[offset, offset+length)``; the range must be present."""
        with self._fd() as fd:
            cipher = os.pread(fd, length, offset)
        if len(cipher) != length:
            raise OSError(f"cache file {self.vid} is short at {offset}+{length}")
        return decrypt(self.dk, offset, cipher)

    def store_fetched(
        self, offset: int, data: bytes | bytearray | memoryview, *, direct: bool = False
    ) -> None:
        """Put bytes fetched from the source where they are still missing.

        An encrypted object's bytes are stored as they come; a plaintext
        object's are encrypted under the copy's own key first.  Either way a
        range is stored once: present bytes are never written again.
        ``direct``: past the page cache (:data:`DIRECT`), for bytes whose
        reader is served from memory and will not read the file soon.
        """
        end = offset + len(data)
        view = memoryview(data)
        for s, e in self.present.missing(offset, min(end, self.size)):
            self.write_fetched(s, view[s - offset : e - offset], direct=direct)
            self.mark(s, e)

    def write_fetched(self, offset: int, data: memoryview, *, direct: bool = False) -> None:
        """Write fetched bytes of a missing range, without marking them present.

        For callers that decided the range (missing, and no other writer's)
        in the event loop and mark it there afterwards, so writes of disjoint
        ranges run in parallel threads that never touch ``present``.
        """
        if self.plaintext_source:
            data = memoryview(encrypt(self.dk, offset, data))
        with self._fd() as fd:
            if direct:
                DIRECT.write(fd, data, offset)
            else:
                pwrite_all(fd, data, offset)

    def produce(
        self,
        offset: int,
        plain: bytes | bytearray | memoryview,
        *,
        hold: memoryview | None = None,
    ) -> None:
        """Encrypt a range of a copy being produced for upload (each range once).

        ``hold``: the ciphertext is also kept there (a streamed part's buffer,
        cosencfs/fs/partjob.py, which its PUT sends) and written past the
        page cache, which nobody reads it from soon.
        """
        if self.present.missing(offset, offset + len(plain)) != [(offset, offset + len(plain))]:
            raise ValueError(f"range {offset}+{len(plain)} of {self.vid} was produced before")
        if hold is not None:
            encrypt_into(self.dk, offset, plain, hold)
        with self._fd() as fd:
            if hold is None:
                pwrite_all(fd, encrypt(self.dk, offset, plain), offset)
            else:
                DIRECT.write(fd, hold, offset)
        self.mark(offset, offset + len(plain))

    def fsync(self) -> None:
        with self._fd() as fd:
            os.fdatasync(fd)
