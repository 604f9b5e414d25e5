"""A directory index's body, written or read, in an unlinked private file of the cache.

A rewrite of a 100,000-entry directory builds ~15 MB of lines, and a cold
listing of it receives as much.  Held in the daemon's memory (a heap
``bytearray`` first, then a private anonymous mapping) they were the
daemon's peak RSS at 100,000 files (issue 18; docs/performance.md, "The
index's body in a file").  Here they lie in a file of the cache's data
directory that has no name (``O_TMPFILE``; where the filesystem has none,
created with ``O_EXCL`` and unlinked at once: a crash in between leaves a
file the start-up sweep deletes, as any file nothing names), mode 0600,
opened with ``O_NOFOLLOW``: its pages are page cache, which the kernel
may write back and drop, not the daemon's.  It is never mapped (mapped
file pages count in RSS): written with ``pwritev``, read back with
``preadv`` into one reused buffer of :data:`CHUNK` bytes.  Closing its
descriptor (when the rewrite or the listing ends, on every path) is
deleting it.

- :class:`IndexLines`: the entry lines appended at :data:`HEAD_ROOM`, the
  header written right before them and the MAC line after them (the MAC
  read back in chunks by a worker thread: the header, which holds the
  entry count, comes first in the MAC's input), sent as a ``FileRange``
  of ``/proc/self/fd/<fd>`` (the transport reopens that path per attempt
  and sends it with ``sendfile``, or in steps over https).
- :class:`ReceivedIndex`: an index received by ranged GETs of
  :data:`CHUNK` bytes (``If-Match`` its listed ETag, each into the same
  buffer) and written to the file, its MAC verified by a worker thread,
  then its entries decoded from the file a chunk at a time
  (cosencfs/crypto/dirindexfile.py).

What the file holds is what the bucket's index object holds (names and
attributes, no key): docs/security.md.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import mmap
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import trio

from cosencfs.cache.layout import new_vid
from cosencfs.crypto.dirindex import HEAD_ROOM, IndexEntry, head_line, mac_line_of
from cosencfs.crypto.dirindexfile import file_entries, verify_file
from cosencfs.crypto.objecttags import TagKey
from cosencfs.errors import IntegrityError
from cosencfs.store.base import FileRange, ObjectStore

log = logging.getLogger(__name__)

#: Bytes of an index held in memory at once (a GET's range, a read's buffer).
CHUNK = 1024 * 1024
#: Lines gathered before one ``pwritev`` (event loop: a page-cache write of
#: this size costs ~20 us, less than a hop to a worker thread).
_FLUSH = 64 * 1024
_IOV_MAX = 512
_FLAGS = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW


def open_private(directory: Path) -> int:
    """A descriptor of a new, empty, nameless file in ``directory`` (mode 0600)."""
    try:
        return os.open(directory, _FLAGS | os.O_TMPFILE, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    path = directory / new_vid()
    fd = os.open(path, _FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.unlink(path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _pwrite_all(fd: int, parts: list[bytes], at: int) -> None:
    want = sum(len(p) for p in parts)
    got = os.pwritev(fd, parts, at)
    if got != want:  # (a regular file writes all or fails, short only at a full disk)
        rest = b"".join(parts)[got:]
        while rest:
            n = os.pwrite(fd, rest, at + got)
            got += n
            rest = rest[n:]


def _mmap(size: int) -> mmap.mmap:
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _close_buffer(buf: mmap.mmap | None) -> None:
    if buf is not None:
        try:
            buf.close()
        except BufferError:
            # A view outlived the call (kept by a retry or a log): unmapped
            # when the last view goes.
            log.debug("index buffer still referenced; unmapped later")


def _digest(fd: int, start: int, end: int) -> bytes:
    """SHA-256 of ``fd[start:end]``.  Worker thread: holds no lock; the file is the caller's."""
    digest = hashlib.sha256()
    with _mmap(min(CHUNK, max(1, end - start))) as buf, memoryview(buf) as view:
        at = start
        while at < end:
            want = min(len(view), end - at)
            with view[:want] as part:
                got = os.preadv(fd, [part], at)
                if got != want:
                    raise OSError(f"index file shorter than written ({got} < {want} at {at})")
                digest.update(part)
            at += got
    return digest.digest()


class _File:
    def __init__(self, directory: Path) -> None:
        self.fd = open_private(directory)

    @property
    def path(self) -> str:
        """A path that opens this file while it is open (for a ``FileRange``)."""
        return f"/proc/self/fd/{self.fd}"

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)  # (the last reference: the file is gone)


class IndexLines(_File):
    """Entry lines appended in order, at most ``bound`` bytes of them, in a private file."""

    def __init__(self, directory: Path, bound: int) -> None:
        super().__init__(directory)
        self._limit = HEAD_ROOM + bound
        self._end = HEAD_ROOM
        #: Lines not written yet, and where they go.
        self._parts: list[bytes] = []
        self._written = HEAD_ROOM
        #: More lines were offered than the bound holds (the index is not written).
        self.overflowed = False

    def __len__(self) -> int:
        return self._end - HEAD_ROOM

    def append(self, line: bytes) -> None:
        end = self._end + len(line)
        if end > self._limit:
            self.overflowed = True
            return
        self._parts.append(line)
        self._end = end
        if end - self._written >= _FLUSH or len(self._parts) >= _IOV_MAX:
            self._flush()

    def _flush(self) -> None:
        if self._parts:
            _pwrite_all(self.fd, self._parts, self._written)
            self._parts.clear()
            self._written = self._end

    async def copy_from(
        self, other: IndexLines, start: int, end: int, limiter: trio.CapacityLimiter
    ) -> None:
        """Append ``other``'s lines ``[start, end)`` (offsets as ``len(other)`` gave them)."""
        n = end - start
        if n <= 0:
            return
        if self._end + n > self._limit:
            self.overflowed = True
            return
        other._flush()
        if n <= _FLUSH:
            # (Event loop: a small page-cache read, as a flush is a small write.)
            self.append(os.pread(other.fd, n, HEAD_ROOM + start))
            return
        self._flush()
        await trio.to_thread.run_sync(
            _copy, other.fd, HEAD_ROOM + start, self.fd, self._end, n, limiter=limiter
        )
        self._end += n
        self._written = self._end

    async def body(
        self, tk: TagKey, *, kid: str, prefix: str, n: int, limiter: trio.CapacityLimiter
    ) -> FileRange:
        """The index of the lines (header and MAC line written around them), as a file range.

        Valid until :meth:`close`; the lines must not change meanwhile.
        """
        self._flush()
        head = head_line(kid, prefix, n)
        if len(head) > HEAD_ROOM:
            raise ValueError("no room before the index's entry lines")
        start = HEAD_ROOM - len(head)
        os.pwrite(self.fd, head, start)
        digest = await trio.to_thread.run_sync(_digest, self.fd, start, self._end, limiter=limiter)
        line = mac_line_of(tk, kid=kid, prefix=prefix, n=n, digest=digest)
        os.pwrite(self.fd, line, self._end)
        return FileRange(self.path, start, self._end + len(line) - start)


def _copy(src: int, src_at: int, dst: int, dst_at: int, n: int) -> None:
    """Copy ``n`` bytes between the files, in the kernel where it can.

    Worker thread: holds no lock; both files are the caller's alone.
    """
    while n > 0:
        try:
            got = os.copy_file_range(src, dst, n, src_at, dst_at)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            got = os.pwrite(dst, os.pread(src, min(n, CHUNK), src_at), dst_at)
        if got <= 0:
            raise OSError("index file shorter than written")
        src_at, dst_at, n = src_at + got, dst_at + got, n - got


class ReceivedIndex(_File):
    """One index's body, received into a private file of its listed size."""

    def __init__(self, directory: Path, key: str, size: int) -> None:
        super().__init__(directory)
        self.key = key
        self.size = size
        #: The one buffer a chunk of the body passes through (received, read).
        self._buf: mmap.mmap | None = _mmap(max(1, min(CHUNK, size)))

    def _buffer(self, want: int) -> Callable[[int], memoryview]:
        def give(n: int) -> memoryview:
            # (In the event loop, once the answer's length is known.)
            if n > want or self._buf is None:
                raise IntegrityError("larger than its listing said", key=self.key)
            return memoryview(self._buf)[:n]

        return give

    async def fetch(self, store: ObjectStore, etag: str) -> None:
        """Receive the body, ``CHUNK`` bytes per GET, each ``If-Match`` the listed ETag."""
        for at in range(0, self.size, CHUNK):
            want = min(CHUNK, self.size - at)
            view = await store.get_into(self.key, at, at + want, self._buffer(want), if_match=etag)
            with view:
                if len(view) > want:
                    raise IntegrityError("larger than its listing said", key=self.key)
                if len(view) < want:
                    raise IntegrityError("shorter than its answer said", key=self.key)
                # Event loop: one chunk into the page cache (~100 us for 1 MiB).
                os.pwrite(self.fd, view, at)

    async def entries(
        self, keys: Mapping[str, TagKey], prefix: str, limiter: trio.CapacityLimiter
    ) -> Iterator[IndexEntry]:
        """The body's entries, once its MAC verified (IntegrityError before any entry)."""
        buf, fd, size = self._buf, self.fd, self.size
        if buf is None:
            raise ValueError("index closed")
        start, end = await trio.to_thread.run_sync(
            lambda: verify_file(keys, prefix=prefix, fd=fd, size=size, buf=buf), limiter=limiter
        )
        return file_entries(fd, start, end, self.key, buf)

    def close(self) -> None:
        buf, self._buf = self._buf, None
        _close_buffer(buf)
        super().close()
