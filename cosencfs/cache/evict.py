"""Freeing cache space inside clean copies that are in use: range eviction.

Whole-copy eviction (:meth:`CacheManager.evict`) can only drop copies nobody
uses; a file being read, or open for a long time, keeps its copy busy, and
reading a 100 GiB file would fill the cache disk.  So once the unused copies
are gone and the cache is still over its limit, the clean ranges of copies in
use go too: every present byte except

* the ranges a reader or an upload is reading right now (``ObjectContent.busy``,
  registered before the reader's first await and released after its last
  read of the file),
* the ranges being fetched (``inflight``), and
* the window just ahead of each sequential reader (``ObjectContent.ahead``):
  read-ahead fetched but not read yet is what the reader needs next.

A dropped range is fetched again, with ``If-Match`` on the object's ETag, if
it is read again: the same ciphertext, so nothing is ever encrypted twice.
Copies being produced for an upload (``holds``) are never touched, nor is
dirty data (dirty layers are not clean copies).  Blocks are freed with
``fallocate(PUNCH_HOLE)``; ranges are cut on :data:`DROP_ALIGN` boundaries
so each hole frees whole filesystem blocks and re-fetches stay chunk-aligned.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
from collections.abc import Iterable

from cosencfs.cache.content import ObjectContent
from cosencfs.cache.extents import Extents

log = logging.getLogger(__name__)

#: Dropped ranges start and end on multiples of this (the integrity chunk).
DROP_ALIGN = 64 * 1024

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free the file's blocks in ``[offset, offset+length)`` (they read as zeros)."""
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _protected(v: ObjectContent) -> Extents:
    keep = Extents()
    for s, e in v.busy:
        keep.add(s, e)
    for inf in v.inflight:
        keep.add(inf.start, inf.end)
    if v.ahead is not None:
        keep.add(*v.ahead)
    return keep


def droppable(v: ObjectContent) -> list[tuple[int, int]]:
    """The present ranges of ``v`` that may go now, aligned inwards, in order."""
    if v.holds or v.discarded or v.source is None:
        return []
    keep = _protected(v)
    limit = v.limit  # only bytes the source can give again
    out = []
    for s, e in v.present.intersection(0, limit):
        for gs, ge in keep.missing(s, e):
            a = -(-gs // DROP_ALIGN) * DROP_ALIGN
            b = ge if ge >= limit else ge - ge % DROP_ALIGN
            if b > a:
                out.append((a, b))
    return out


class RangeEvictor:
    """Drops clean ranges of busy copies; turns itself off where holes are not supported."""

    __slots__ = ("dropped", "enabled")

    def __init__(self) -> None:
        self.enabled = True
        #: Bytes freed this way since the mount started.
        self.dropped = 0

    def free(self, copies: Iterable[ObjectContent], need: int) -> int:
        """Free at least ``need`` bytes if possible; the bytes freed.

        Runs in the event loop with no await: nothing can start reading a
        range between the check that it is not busy and its drop.
        """
        freed = 0
        try:
            for v in copies if self.enabled else ():
                for s, e in droppable(v):
                    if freed >= need:
                        return freed
                    freed += v.drop(s, e, punch_hole)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            log.warning(
                "the cache directory's filesystem cannot free parts of files (%s): "
                "files in use may keep the cache above its limit",
                exc,
            )
            self.enabled = False
        finally:
            self.dropped += freed
        return freed
