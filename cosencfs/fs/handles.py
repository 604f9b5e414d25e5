"""Open-file handles: their numbers, access mode, and each one's readahead window."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from cosencfs.errors import FsError
from cosencfs.fs.inode import Inode


@dataclass(slots=True)
class Readahead:
    """Sequential-read detection of one handle: a window that doubles while reads
    follow each other (1 MiB → 32 MiB by default) and drops to zero on a jump.

    A jump *away* from the window (not a read arriving a little out of order,
    nor a skip forward into what was already asked for) sets ``moved_away``:
    the reader cancels what it fetched ahead there (cosencfs/fs/reads.py).
    """

    seq_end: int = 0
    window: int = 0
    #: Everything below this has been asked for already.
    ahead_until: int = 0
    #: Reads since the handle was opened that did not follow the one before.
    jumps: int = 0
    #: The whole object was asked for (random access on a file that fits the cache).
    whole: bool = False
    #: The last read left the window: its fetches ahead are not needed any more.
    moved_away: bool = False

    def advance(
        self,
        offset: int,
        size: int,
        limit: int,
        *,
        smallest: int,
        largest: int,
        fetching: bool,
        pieces: int = 2,
    ) -> tuple[int, int] | None:
        """A read of ``[offset, offset+size)``: the range to prefetch now, if any.

        ``limit`` is where the fetchable bytes end; ``fetching`` False (no
        background tasks yet) only follows the reads.  A read within
        ``smallest`` (or twice its size) of the window is near: what was
        asked for ahead stays asked for.  The window is topped up once a
        ``pieces``-th of it (at least ``smallest``) has been read.
        """
        self.moved_away = False
        if offset == self.seq_end:
            self.window = min(max(self.window * 2, smallest), largest)
        else:
            self.jumps += 1
            self.window = 0
            near = max(smallest, 2 * size)
            reach = max(self.ahead_until, self.seq_end)
            if not self.seq_end - near <= offset < reach + near:
                self.moved_away = True
                self.ahead_until = 0
        end = offset + size
        self.seq_end = end
        if not self.window or not fetching:
            return None
        # Top the window up only once a piece of it has been consumed, so each
        # prefetch is a large GET rather than one small GET per read.
        if self.ahead_until - end > self.window - max(smallest, self.window // pieces):
            return None
        start = max(end, self.ahead_until)
        stop = min(end + self.window, limit)
        if stop <= start:
            return None
        self.ahead_until = stop
        return start, stop


@dataclass(slots=True, eq=False)
class Handle:
    fh: int
    node: Inode
    writable: bool
    append: bool
    #: Written through this handle since its last flush (close).
    wrote: bool = False
    #: The kernel was told to bypass its page cache for this handle
    #: (FOPEN_DIRECT_IO, :func:`direct_io_wanted`).
    direct: bool = False
    readahead: Readahead = field(default_factory=Readahead)


#: Set-user-ID and set-group-ID: a write by an unprivileged user must drop them.
SETID_BITS = stat.S_ISUID | stat.S_ISGID


def direct_io_wanted(node: Inode, flags: int, kernel: tuple[int, int]) -> bool:
    """Whether a new handle of ``node`` opened with ``flags`` bypasses the page cache.

    A write-only handle gains nothing from the page cache (nothing reads
    through it, and a file opened write-only cannot be mapped), while each
    write(2) through the cache costs the kernel a copy into page-cache pages
    and, before it, a ``getxattr("security.capability")`` round trip to the
    daemon: a FUSE superblock is not ``SB_NOSEC``, so the kernel asks on
    every write whether privileges must be removed.  A direct write skips
    both: one of the seven requests of a small file, one of the two of a
    small write.

    Only where the direct path is as coherent as the cached one: Linux 6.6
    and later invalidate the page-cache pages a direct write covers, so a
    reader holding them (another descriptor, or an earlier one's
    ``keep_cache``) reads the new bytes; older kernels keep the cached path.
    Not for a file with set-ID bits: the kernel's direct path leaves their
    removal to the daemon (``FUSE_WRITE_KILL_SUIDGID``, which pyfuse3 does
    not pass on); :meth:`Filesystem.write` removes bits set after the open.
    Attributes not known yet (never, after the kernel's own lookup): cached.
    """
    return (
        flags & os.O_ACCMODE == os.O_WRONLY
        and kernel >= (6, 6)
        and node.attrs_known
        and not node.attrs.mode & SETID_BITS
    )


class HandleTable:
    """The open handles by number; each counts as an open of its inode."""

    def __init__(self) -> None:
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1

    def __len__(self) -> int:
        return len(self._handles)

    def get(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise FsError(errno.EBADF) from None

    def open(self, node: Inode, flags: int) -> Handle:
        acc = flags & os.O_ACCMODE
        h = Handle(
            self._next_fh,
            node,
            writable=acc in (os.O_WRONLY, os.O_RDWR),
            append=bool(flags & os.O_APPEND),
        )
        self._next_fh += 1
        self._handles[h.fh] = h
        node.as_file.open_count += 1
        return h

    def close(self, fh: int) -> Handle | None:
        """Forget handle ``fh`` (None if unknown); its inode has one open less."""
        h = self._handles.pop(fh, None)
        if h is not None:
            h.node.as_file.open_count -= 1
        return h
