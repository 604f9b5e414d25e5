"""O_DIRECT writes of cache-file ranges: no page cache, no copy into it.

Read-ahead served from memory (cosencfs/cache/plainhold.py) is not read
from the cache file soon.  Written through the page cache it cost a copy
into freshly allocated pages, the largest single cost of a cold sequential
read on the benchmark machine (docs/performance.md), and held the bytes in
memory a second time.  The aligned middle of a range goes through a
page-aligned buffer and a second descriptor of the same file, reopened
through ``/proc/self/fd`` (the same inode, whatever became of the path);
the unaligned edges are written as before.  Bytes that already lie in
page-aligned memory (a piece received into a buffer of
cosencfs/cache/recvbuf.py) are written from where they are, with no copy.
Where the filesystem refuses O_DIRECT, or ``/proc`` is missing, the writer
turns itself off and every range is written through the page cache.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (through the page cache)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


#: O_DIRECT writes start and end on multiples of this (and so does their memory).
DIRECT_ALIGN = 4096
#: The page-aligned buffer an O_DIRECT write goes through (fetched bytes are not aligned).
DIRECT_BUFFER = 2 * 1024 * 1024


class DirectWriter:
    """Writes ranges of cache files with O_DIRECT where the filesystem allows it.

    Called from worker threads (the caller holds its copy's lock): the pool
    of aligned buffers has a lock of its own.
    """

    def __init__(self) -> None:
        self.enabled = True
        #: Bytes written with O_DIRECT since start, and of them straight from
        #: the caller's memory, with no copy (the tests count them).
        self.written = 0
        self.in_place = 0
        self._lock = threading.Lock()
        self._pool: list[tuple[mmap.mmap, memoryview]] = []

    def write(self, fd: int, data: memoryview, offset: int) -> None:
        end = offset + len(data)
        a = -(-offset // DIRECT_ALIGN) * DIRECT_ALIGN
        b = end - end % DIRECT_ALIGN
        dfd = self._open(fd) if self.enabled and b - a >= DIRECT_ALIGN else -1
        if dfd < 0:
            pwrite_all(fd, data, offset)
            return
        try:
            if a > offset:
                pwrite_all(fd, data[: a - offset], offset)
            middle = data[a - offset : b - offset]
            if address(middle) % DIRECT_ALIGN == 0:
                done = self._in_place(dfd, middle, a)
            else:
                done = self._aligned(dfd, middle, a)
            # What O_DIRECT did not take (refused, or short), and the tail.
            pwrite_all(fd, data[done - offset :], done)
        finally:
            os.close(dfd)

    def _pwrite(self, dfd: int, data: memoryview, pos: int) -> int | None:
        """One O_DIRECT write; None, and O_DIRECT off, if the filesystem refuses its alignment."""
        try:
            wrote = os.pwrite(dfd, data, pos)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.enabled = False  # alignment this filesystem does not take
            return None
        with self._lock:
            self.written += wrote
        return wrote

    def _in_place(self, dfd: int, data: memoryview, offset: int) -> int:
        """Write aligned ``data`` (its memory too) at aligned ``offset``; where it stopped."""
        pos, end = offset, offset + len(data)
        while pos < end:
            wrote = self._pwrite(dfd, data[pos - offset :], pos)
            if wrote is None:
                return pos
            with self._lock:
                self.in_place += wrote
            pos += wrote
            if wrote % DIRECT_ALIGN:
                return pos  # (the rest is no longer aligned: written through the page cache)
        return pos

    def _aligned(self, dfd: int, data: memoryview, offset: int) -> int:
        """Write ``data`` at ``offset`` (both aligned) with O_DIRECT; where it stopped."""
        pos, end = offset, offset + len(data)
        with self._lock:
            buf = self._pool.pop() if self._pool else None
        if buf is None:
            m = private_mapping(DIRECT_BUFFER)
            buf = (m, memoryview(m))
        view = buf[1]
        try:
            while pos < end:
                n = min(DIRECT_BUFFER, end - pos)
                view[:n] = data[pos - offset : pos - offset + n]
                wrote = self._pwrite(dfd, view[:n], pos)
                if wrote is None:
                    return pos
                pos += wrote
                if wrote != n:
                    return pos
            return pos
        finally:
            with self._lock:
                self._pool.append(buf)

    def _open(self, fd: int) -> int:
        try:
            return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError:
            self.enabled = False
            return -1


def private_mapping(size: int) -> mmap.mmap:
    """``size`` bytes of page-aligned anonymous memory, private to this process.

    ``mmap.mmap(-1, n)`` maps *shared* anonymous memory, which Linux keeps
    in shmem: each first touch of a page is a shmem fault (perf showed them
    under the socket receives of a cold read), dearer than a private one.
    Nothing here is shared with a child, so private it is.
    """
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def aligned_buffer(size: int) -> memoryview:
    """A writable, zeroed ``size``-byte view whose first byte is page-aligned.

    From the heap (a ``bytearray`` one page larger, the view cut where the
    page starts), so glibc reuses the memory from one buffer to the next; an
    O_DIRECT write of an aligned range of it goes from where it lies
    (``DirectWriter.write``), with no copy through the writer's buffers.
    """
    raw = bytearray(size + DIRECT_ALIGN)
    skip = -address(memoryview(raw)) % DIRECT_ALIGN
    return memoryview(raw)[skip : skip + size]


def address(view: memoryview) -> int:
    """Where ``view``'s bytes start in memory; 1 (never aligned) when that cannot be told."""
    if view.readonly or not view.c_contiguous or not view.nbytes:
        return 1  # (ctypes needs a writable buffer; bytes are copied as before)
    c = ctypes.c_char.from_buffer(view)
    try:
        return ctypes.addressof(c)
    finally:
        del c


#: The one O_DIRECT writer of the process (its buffers are shared by every copy).
DIRECT = DirectWriter()
