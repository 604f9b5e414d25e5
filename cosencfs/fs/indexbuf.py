"""A directory index's body, written or read, in a mapping of its own.

A rewrite of a 100,000-entry directory builds ~15 MB of lines.  Grown as a
``bytearray`` they were reallocated on the way (the old and the new block
both resident at each move) in glibc's heap, which serves blocks under
16 MiB (cosencfs/cache/recvbuf.py), and a heap cannot give room back below
live objects allocated after it: per-file objects of the files created
meanwhile.  So each rewrite raised the daemon's RSS by 20-29 MiB for good,
and the last one set its peak (issue 18; docs/performance.md, "Memory at
100,000 files, fourth round").

Here the lines go into a private anonymous mapping reserved at the index's
bound: only the pages written are resident, nothing is ever moved, the
header and the MAC line are put around the lines where they lie
(:func:`encode_around`), the PUT sends the body from there, and the
mapping is unmapped when the rewrite ends.  Reading is the same: the body
(received into a heap ``bytes``, then copied once more for its MAC, while a
fresh mount's 100,000 inodes were all live) is received into a mapping
(:class:`ReceivedIndex`) and decoded where it lies.
"""

from __future__ import annotations

import logging
import mmap

from cosencfs.crypto.dirindex import HEAD_ROOM, TAIL_ROOM, encode_around
from cosencfs.crypto.objecttags import TagKey
from cosencfs.errors import IntegrityError
from cosencfs.store.base import ObjectStore

log = logging.getLogger(__name__)


class IndexLines:
    """Entry lines appended in order, at most ``bound`` bytes of them."""

    def __init__(self, bound: int) -> None:
        self._mm = mmap.mmap(
            -1, HEAD_ROOM + bound + TAIL_ROOM, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        )
        self._limit = HEAD_ROOM + bound
        self._end = HEAD_ROOM
        #: More lines were offered than the bound holds (the index is not written).
        self.overflowed = False

    def __len__(self) -> int:
        return self._end - HEAD_ROOM

    def append(self, line: bytes | memoryview) -> None:
        end = self._end + len(line)
        if end > self._limit:
            self.overflowed = True
            return
        self._mm[self._end : end] = line
        self._end = end

    def view(self) -> memoryview:
        """The lines so far (to merge from: released before :meth:`close`)."""
        return memoryview(self._mm)[HEAD_ROOM : self._end]

    def body(self, tk: TagKey, *, kid: str, prefix: str, n: int) -> memoryview:
        """The index of the lines (header and MAC put around them), as a view.

        The view must be released before :meth:`close` unmaps the lines.
        """
        start, end = encode_around(
            tk, kid=kid, prefix=prefix, n=n, buf=self._mm, start=HEAD_ROOM, end=self._end
        )
        return memoryview(self._mm)[start:end]

    def close(self) -> None:
        try:
            self._mm.close()
        except BufferError:
            # A view of the body outlived the PUT (kept by a retry or a log):
            # the mapping goes when the last view does.
            log.debug("index lines still referenced; unmapped later")


class ReceivedIndex:
    """One index's body, received into a mapping of its listed size."""

    def __init__(self, key: str, size: int) -> None:
        self.key = key
        self.size = size
        self._mm: mmap.mmap | None = None

    def _buffer(self, n: int) -> memoryview:
        # (In the event loop, once the answer's length is known.)
        if n > self.size:
            raise IntegrityError("larger than its listing said", key=self.key)
        self._mm = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        return memoryview(self._mm)

    async def get(self, store: ObjectStore, etag: str) -> bytes | mmap.mmap:
        """The body: the mapping it was received into, or bytes (a small one,
        which the store received into its own)."""
        if self.size <= 0:
            return b""
        view = await store.get_into(self.key, 0, self.size, self._buffer, if_match=etag)
        with view:
            if self._mm is not None and view.obj is self._mm:
                if len(view) != len(self._mm):
                    raise IntegrityError("shorter than its answer said", key=self.key)
                return self._mm
            if len(view) > self.size:
                raise IntegrityError("larger than its listing said", key=self.key)
            return bytes(view)

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                log.debug("index body still referenced; unmapped later")
