"""Attributes as the kernel wants them: ``Entry`` for an inode, ``StatFs`` for the mount."""

from __future__ import annotations

from dataclasses import dataclass

from cosencfs.fs.context import FsOptions
from cosencfs.fs.inode import Inode
from cosencfs.fs.names import MAX_NAME_BYTES

BLOCK = 512
BLKSIZE = 128 * 1024


@dataclass(slots=True)
class Entry:
    """Attributes as the kernel wants them.

    Not frozen: one is made per readdir entry, lookup and getattr, and a
    frozen dataclass's ``__init__`` costs ~6 times as much (a
    ``object.__setattr__`` per field). Nobody changes one after it is made.
    """

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    entry_timeout: float
    attr_timeout: float
    rdev: int = 0

    @property
    def blocks(self) -> int:
        return -(-self.size // BLOCK)


@dataclass(slots=True, frozen=True)
class StatFs:
    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    namemax: int


def make_entry(node: Inode, opts: FsOptions) -> Entry:
    a = node.attrs
    kind = node.kind
    # (``current_size``: a clean file holding no FileState is not given one.)
    size = 0 if kind.special else node.current_size
    # (One call for the three times: asked per entry of every ls -l.)
    mtime, ctime, atime = a.times()
    return Entry(
        node.ino,
        a.mode,
        0 if node.unlinked else 1,
        a.uid,
        a.gid,
        size,
        atime,
        mtime,
        ctime,
        opts.entry_timeout,
        # Attributes still to be HEADed are defaults: the kernel must ask.
        opts.attr_timeout if node.attrs_known else 0.0,
        a.rdev if kind.device else 0,
    )


def make_statfs(inodes: int) -> StatFs:
    # COS has no capacity limit worth reporting; 1 PiB keeps tools like df
    # and installers happy without claiming infinity.
    frsize = 4096
    blocks = 2**50 // frsize
    files = 2**32
    return StatFs(
        bsize=BLKSIZE,
        frsize=frsize,
        blocks=blocks,
        bfree=blocks,
        bavail=blocks,
        files=files,
        ffree=files - inodes,
        namemax=MAX_NAME_BYTES,
    )
