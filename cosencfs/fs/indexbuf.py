"""The entry lines of one directory-index rewrite, in a mapping of their own.

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
mapping is unmapped when the rewrite ends.
"""

from __future__ import annotations

import logging
import mmap

from cosencfs.crypto.dirindex import HEAD_ROOM, TAIL_ROOM, encode_around
from cosencfs.crypto.objecttags import TagKey

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
