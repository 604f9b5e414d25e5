"""The pyfuse3 adapter: FUSE requests in, ``Filesystem`` calls, errno out.

This module and ``cosencfs.mount`` are the only ones that import pyfuse3.
Every exception becomes a ``FUSEError`` through ``errno_for`` — the one table
of the project — and unexpected ones are logged with a traceback first.
"""

from __future__ import annotations

import errno
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from cosencfs.errors import (
    AccessDeniedError,
    CacheIntegrityError,
    ConfigError,
    CosEncFsError,
    CryptoError,
    DamagedObjectError,
    FsError,
    IntegrityError,
    InvalidRequestError,
    NoSuchBucketError,
    NotFoundError,
    PreconditionFailedError,
    RefusedError,
    StoreError,
    TransientError,
)
from cosencfs.fs.core import Filesystem
from cosencfs.fs.entry import Entry
from cosencfs.fs.rename import RENAME_EXCHANGE, RENAME_NOREPLACE
from cosencfs.fs.stats import FUSE_REQUESTS
from cosencfs.mount.logsetup import LogThrottle

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Exception class -> errno, most specific first.
ERRNO_TABLE: tuple[tuple[type[BaseException], int], ...] = (
    (NoSuchBucketError, errno.EIO),
    (NotFoundError, errno.ENOENT),
    (AccessDeniedError, errno.EACCES),
    (PreconditionFailedError, errno.ESTALE),
    (TransientError, errno.EIO),
    (CryptoError, errno.EIO),
    (IntegrityError, errno.EIO),
    (DamagedObjectError, errno.EIO),
    (CacheIntegrityError, errno.EIO),
    (RefusedError, errno.EIO),
    (ConfigError, errno.EIO),
    (StoreError, errno.EIO),
)

#: COS error codes with a better errno than EIO.
_CODE_ERRNO = {
    "KeyTooLong": errno.ENAMETOOLONG,
    "MetadataTooLarge": errno.E2BIG,
    "EntityTooLarge": errno.EFBIG,
}

#: Errors worth one log line per object, not one per read.
_LOG_EVERY = 60.0


_throttle = LogThrottle(_LOG_EVERY)

#: Requests answered with an error other than the filesystem's own (ENOENT,
#: EEXIST...), by the error's class: wrong keys, refused objects, integrity
#: failures, COS trouble (``cosencfs_errors_total``). Event loop only.
ERRORS: Counter[str] = Counter()


def errno_for(exc: BaseException) -> int:
    if isinstance(exc, FsError):
        return exc.errno
    if isinstance(exc, InvalidRequestError):
        return _CODE_ERRNO.get(exc.code, errno.EIO)
    for cls, code in ERRNO_TABLE:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def _report(op: str, exc: BaseException) -> None:
    if isinstance(exc, FsError):
        if exc.errno == errno.EIO:
            log.error("%s: %s", op, exc)
        return
    ERRORS[type(exc).__name__] += 1
    if isinstance(exc, CosEncFsError | OSError):
        what = (op, type(exc).__name__, str(getattr(exc, "key", "")) or str(exc))
        if isinstance(exc, RefusedError | IntegrityError):
            # One line per object (and chunk), whatever the op: readers retry.
            what = ("", type(exc).__name__, f"{exc.key}#{getattr(exc, 'chunk', '')}")
        if _throttle.should_log(what, time.monotonic()):
            log.error("%s failed: %s", op, exc)
        return
    log.error("%s: unexpected error", op, exc_info=exc)


def translate(
    fn: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        FUSE_REQUESTS[name] += 1
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except (trio.Cancelled, KeyboardInterrupt):
            raise
        except Exception as exc:
            _report(fn.__name__, exc)
            raise pyfuse3.FUSEError(errno_for(exc)) from None

    return wrapper


#: setattr: which field flag gives which Filesystem.setattr argument, from where.
_SETATTR = (
    ("update_mode", "mode", "st_mode"),
    ("update_uid", "uid", "st_uid"),
    ("update_gid", "gid", "st_gid"),
    ("update_size", "size", "st_size"),
    ("update_atime", "atime_ns", "st_atime_ns"),
    ("update_mtime", "mtime_ns", "st_mtime_ns"),
)


def to_attrs(e: Entry) -> pyfuse3.EntryAttributes:
    a = pyfuse3.EntryAttributes()
    a.st_ino = pyfuse3.InodeT(e.ino)
    a.generation = 0
    a.entry_timeout = e.entry_timeout
    a.attr_timeout = e.attr_timeout
    a.st_mode = pyfuse3.ModeT(e.mode)
    a.st_nlink = e.nlink
    a.st_uid = e.uid
    a.st_gid = e.gid
    a.st_rdev = e.rdev
    a.st_size = e.size
    a.st_blksize = 128 * 1024
    a.st_blocks = e.blocks
    a.st_atime_ns = e.atime_ns
    a.st_mtime_ns = e.mtime_ns
    a.st_ctime_ns = e.ctime_ns
    return a


class FuseOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, fs: Filesystem) -> None:
        super().__init__()
        self.fs = fs
        fs.ctx.invalidate_entry = self._invalidate_entry
        fs.ctx.invalidate_inode = self._invalidate_inode
        fs.ctx.invalidate_attrs = self._invalidate_attrs

    # The kernel must not be told about changes from inside a request for the
    # same inode (it may hold the inode's lock): entries go through the async
    # variant, inodes through a worker thread outside the request.
    def _invalidate_entry(self, parent: int, name: str) -> None:
        try:
            pyfuse3.invalidate_entry_async(
                pyfuse3.InodeT(parent),
                pyfuse3.FileNameT(name.encode("utf-8")),
                ignore_enoent=True,
            )
        except Exception as exc:  # not mounted (tests) or kernel refused
            log.debug("invalidate_entry(%d, %r): %s", parent, name, exc)

    def _invalidate_inode(self, ino: int) -> None:
        nursery = self.fs.ctx.nursery
        if nursery is None:
            return

        async def run() -> None:
            try:
                await trio.to_thread.run_sync(pyfuse3.invalidate_inode, pyfuse3.InodeT(ino))
            except Exception as exc:
                log.debug("invalidate_inode(%d): %s", ino, exc)

        nursery.start_soon(run)

    async def _invalidate_attrs(self, ino: int) -> None:
        # Attributes only: no page-cache work, so it cannot wait on a request
        # of ours (the page cache is dropped through keep_cache=False instead).
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, pyfuse3.InodeT(ino), True)
        except Exception as exc:
            log.debug("invalidate_inode(%d, attr_only): %s", ino, exc)

    # -- requests ----------------------------------------------------------------

    @translate
    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return to_attrs(await self.fs.lookup(parent_inode, bytes(name)))

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        FUSE_REQUESTS["forget"] += 1
        try:
            self.fs.forget([(int(i), n) for i, n in inode_list])
        except Exception:
            log.exception("forget failed")

    @translate
    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return to_attrs(await self.fs.getattr(inode))

    @translate
    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        kw: dict[str, Any] = {
            arg: getattr(attr, st) for flag, arg, st in _SETATTR if getattr(fields, flag)
        }
        return to_attrs(await self.fs.setattr(inode, **kw))

    @translate
    async def readlink(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileNameT:
        return pyfuse3.FileNameT(await self.fs.readlink(inode))

    @translate
    async def mkdir(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        mode = pyfuse3.ModeT(mode & ~ctx.umask)
        return to_attrs(await self.fs.mkdir(parent_inode, bytes(name), mode, ctx.uid, ctx.gid))

    @translate
    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        await self.fs.rmdir(parent_inode, bytes(name))

    @translate
    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        await self.fs.unlink(parent_inode, bytes(name))

    @translate
    async def symlink(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        target: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        entry = await self.fs.symlink(parent_inode, bytes(name), bytes(target), ctx.uid, ctx.gid)
        return to_attrs(entry)

    @translate
    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: pyfuse3.FileNameT,
        parent_inode_new: pyfuse3.InodeT,
        name_new: pyfuse3.FileNameT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        fs_flags = RENAME_NOREPLACE if flags & pyfuse3.RENAME_NOREPLACE else 0
        fs_flags |= RENAME_EXCHANGE if flags & pyfuse3.RENAME_EXCHANGE else 0
        await self.fs.rename(
            parent_inode_old, bytes(name_old), parent_inode_new, bytes(name_new), fs_flags
        )

    @translate
    async def link(
        self,
        inode: pyfuse3.InodeT,
        new_parent_inode: pyfuse3.InodeT,
        new_name: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        return to_attrs(await self.fs.link(inode, new_parent_inode, bytes(new_name)))

    @translate
    async def mknod(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        mode = pyfuse3.ModeT(mode & ~ctx.umask)
        entry = await self.fs.mknod(parent_inode, bytes(name), mode, rdev, ctx.uid, ctx.gid)
        return to_attrs(entry)

    @translate
    async def open(
        self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        fh, keep = await self.fs.open(inode, flags)
        return pyfuse3.FileInfo(
            fh=pyfuse3.FileHandleT(fh), keep_cache=keep, direct_io=self.fs.direct_io(fh)
        )

    @translate
    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        mode = pyfuse3.ModeT(mode & ~ctx.umask)
        fh, entry = await self.fs.create(parent_inode, bytes(name), mode, flags, ctx.uid, ctx.gid)
        info = pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), direct_io=self.fs.direct_io(fh))
        return info, to_attrs(entry)

    @translate
    # (pyfuse3 replies from any contiguous buffer; its stub says bytes.)
    async def read(  # type: ignore[override]
        self, fh: pyfuse3.FileHandleT, off: int, size: int
    ) -> bytes | memoryview:
        return await self.fs.read(fh, off, size)

    @translate
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        return await self.fs.write(fh, off, buf)

    @translate
    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        await self.fs.flush(fh)

    @translate
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        await self.fs.release(fh)

    @translate
    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        await self.fs.fsync(fh, datasync)

    @translate
    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        return pyfuse3.FileHandleT(await self.fs.opendir(inode))

    @translate
    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        for name, entry, next_id in self.fs.readdir(fh, start_id):
            if not pyfuse3.readdir_reply(token, pyfuse3.FileNameT(name), to_attrs(entry), next_id):
                break
            self.fs.readdir_looked_up(entry.ino)

    @translate
    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        await self.fs.releasedir(fh)

    @translate
    async def fsyncdir(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        return None  # directory changes are in COS when their call returns

    @translate
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = self.fs.statfs()
        d = pyfuse3.StatvfsData()
        for name in ("bsize", "frsize", "blocks", "bfree", "bavail", "files", "ffree", "namemax"):
            setattr(d, f"f_{name}", getattr(s, name))
        d.f_favail = s.ffree
        return d


class ControlledOperations(FuseOperations):
    """FUSE operations plus extended attributes: ``user.*`` and the control channel.

    ``getfattr -n user.cosencfs.stats MOUNTPOINT`` returns JSON statistics;
    setting ``user.cosencfs.sync`` uploads everything dirty (EIO on failure).
    Which names exist and where they are stored is the filesystem's business
    (cosencfs/fs/xattrs.py); XATTR_CREATE/XATTR_REPLACE are checked by pyfuse3
    through getxattr before setxattr is called.
    """

    @translate
    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        return await self.fs.getxattr(inode, bytes(name))

    @translate
    async def setxattr(
        self,
        inode: pyfuse3.InodeT,
        name: pyfuse3.XAttrNameT,
        value: bytes,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        await self.fs.setxattr(inode, bytes(name), value)

    @translate
    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        return [pyfuse3.XAttrNameT(n) for n in await self.fs.listxattr(inode)]

    @translate
    async def removexattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        await self.fs.removexattr(inode, bytes(name))
