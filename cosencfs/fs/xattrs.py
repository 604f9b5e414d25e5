"""Extended attributes: the control channel's names (``user.cosencfs.*``), no others.

COS has nowhere to keep extended attributes, so only the control names of
cosencfs/fs/control.py are answered: ``format`` on any file, ``pid`` and
``stats`` on the root, setting ``sync`` on the root uploads everything
dirty, and setting ``accept-untagged`` on a file accepts its untagged object.
Every other name is absent (ENODATA, which is ENOATTR on Linux) and
cannot be set or removed (ENOTSUP).  The names are not listed, so tools
copying extended attributes do not carry them along.
"""

from __future__ import annotations

import errno
import json
import os
from typing import TYPE_CHECKING

from cosencfs import hardening
from cosencfs.errors import FsError
from cosencfs.fs.control import (
    XATTR_ACCEPT_UNTAGGED,
    XATTR_FORMAT,
    XATTR_PID,
    XATTR_STATS,
    XATTR_SYNC,
)
from cosencfs.fs.inode import ROOT_INO

if TYPE_CHECKING:
    from cosencfs.fs.core import Filesystem


async def getxattr(fs: Filesystem, ino: int, name: bytes) -> bytes:
    if name == XATTR_FORMAT:
        return (await fs.object_format(ino)).encode()
    if ino == ROOT_INO:
        if name == XATTR_PID:
            return str(os.getpid()).encode()
        if name == XATTR_STATS:
            # What the kernel says now (prctl), not what was asked for at start.
            stats = {**fs.stats(), "process": hardening.current().as_dict()}
            return json.dumps(stats, sort_keys=True).encode()
    raise FsError(errno.ENODATA)


async def setxattr(fs: Filesystem, ino: int, name: bytes) -> None:
    if ino == ROOT_INO and name == XATTR_SYNC:
        await fs.sync_all()
        return
    if name == XATTR_ACCEPT_UNTAGGED:
        # The kernel let the caller write the file's xattrs: its writer vouches.
        node = fs.ns.inode(ino)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        fs.ctx.tags.forget(fs.ctx.key_of(node))
        return
    raise FsError(errno.ENOTSUP)
