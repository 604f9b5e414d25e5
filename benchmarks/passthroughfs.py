"""A minimal but correct pyfuse3 pass-through filesystem (the Python FUSE ceiling).

Run: ``python -m benchmarks.passthroughfs SOURCE MOUNTPOINT`` (foreground;
``fusermount3 -u MOUNTPOINT`` ends it).

It mirrors SOURCE with the same FUSE stack as cosencfs (pyfuse3 + trio, one
event loop, no kernel writeback cache, 10 s entry/attribute timeouts), doing
each request with one or two system calls in the event loop: what a Python
FUSE daemon costs on this machine with no storage, no crypto and no
bookkeeping behind it. It has no bucket.

Correctness points the pyfuse3 example skips: each ``open`` gets its own
descriptor (a reader never shares a write-only descriptor), reads and writes
use ``pread``/``pwrite``, a directory handle keeps a snapshot of the entries
so offsets stay stable while the directory changes, inodes are the source's
inode numbers with lookup counts, and ``forget`` drops them.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import stat as stat_m
import sys
from collections.abc import Sequence

import pyfuse3
import trio

log = logging.getLogger("passthroughfs")

TIMEOUT = 10.0


def _fail(exc: OSError) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(exc.errno or errno.EIO)


class Passthrough(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = os.path.realpath(source)
        self.root_ino = os.lstat(self.source).st_ino
        # inode -> set of paths (hard links give several); lookup counts.
        self.paths: dict[int, set[str]] = {pyfuse3.ROOT_INODE: {self.source}}
        self.lookups: dict[int, int] = {}
        self.dirs: dict[int, tuple[str, list[tuple[str, pyfuse3.EntryAttributes]]]] = {}
        self.next_dir_fh = 1

    # ----------------------------------------------------------- inode table

    def _ino(self, st_ino: int) -> int:
        return pyfuse3.ROOT_INODE if st_ino == self.root_ino else st_ino

    def _path(self, inode: int) -> str:
        try:
            return next(iter(self.paths[inode]))
        except (KeyError, StopIteration):
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self._path(parent), os.fsdecode(name))

    def _remember(self, inode: int, path: str) -> None:
        self.paths.setdefault(inode, set()).add(path)
        self.lookups[inode] = self.lookups.get(inode, 0) + 1

    def _drop_path(self, path: str, inode: int) -> None:
        paths = self.paths.get(inode)
        if paths is not None:
            paths.discard(path)

    def _attrs(self, st: os.stat_result) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = pyfuse3.InodeT(self._ino(st.st_ino))
        e.generation = 0
        e.st_mode = pyfuse3.ModeT(st.st_mode)
        e.st_nlink = st.st_nlink
        e.st_uid = st.st_uid
        e.st_gid = st.st_gid
        e.st_rdev = st.st_rdev
        e.st_size = st.st_size
        e.st_blksize = st.st_blksize
        e.st_blocks = st.st_blocks
        e.st_atime_ns = st.st_atime_ns
        e.st_mtime_ns = st.st_mtime_ns
        e.st_ctime_ns = st.st_ctime_ns
        e.entry_timeout = TIMEOUT
        e.attr_timeout = TIMEOUT
        return e

    def _lstat(self, path: str) -> pyfuse3.EntryAttributes:
        try:
            return self._attrs(os.lstat(path))
        except OSError as exc:
            raise _fail(exc) from None

    def _entry(self, path: str) -> pyfuse3.EntryAttributes:
        attrs = self._lstat(path)
        self._remember(attrs.st_ino, path)
        return attrs

    # ------------------------------------------------------------ operations

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if name in (b".", b".."):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._entry(self._child(parent_inode, name))

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for inode, n in inode_list:
            left = self.lookups.get(inode, 0) - n
            if left > 0:
                self.lookups[inode] = left
            else:
                self.lookups.pop(inode, None)
                if inode != pyfuse3.ROOT_INODE:
                    self.paths.pop(inode, None)

    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._lstat(self._path(inode))

    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        path = self._path(inode)
        try:
            if fields.update_size:
                if fh is not None:
                    os.ftruncate(fh, attr.st_size)
                else:
                    os.truncate(path, attr.st_size)
            if fields.update_mode:
                os.chmod(path, stat_m.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                uid = attr.st_uid if fields.update_uid else -1
                gid = attr.st_gid if fields.update_gid else -1
                os.chown(path, uid, gid, follow_symlinks=False)
            if fields.update_atime or fields.update_mtime:
                old = os.lstat(path)
                atime = attr.st_atime_ns if fields.update_atime else old.st_atime_ns
                mtime = attr.st_mtime_ns if fields.update_mtime else old.st_mtime_ns
                os.utime(path, ns=(atime, mtime), follow_symlinks=False)
        except OSError as exc:
            raise _fail(exc) from None
        return self._lstat(path)

    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> bytes:
        try:
            return os.fsencode(os.readlink(self._path(inode)))
        except OSError as exc:
            raise _fail(exc) from None

    async def mknod(
        self,
        parent_inode: pyfuse3.InodeT,
        name: bytes,
        mode: int,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        try:
            os.mknod(path, mode & ~ctx.umask, rdev)
            os.chown(path, ctx.uid, ctx.gid, follow_symlinks=False)
        except OSError as exc:
            raise _fail(exc) from None
        return self._entry(path)

    async def mkdir(
        self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        try:
            os.mkdir(path, mode & ~ctx.umask)
            os.chown(path, ctx.uid, ctx.gid, follow_symlinks=False)
        except OSError as exc:
            raise _fail(exc) from None
        return self._entry(path)

    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        path = self._child(parent_inode, name)
        try:
            ino = self._ino(os.lstat(path).st_ino)
            os.unlink(path)
        except OSError as exc:
            raise _fail(exc) from None
        self._drop_path(path, ino)

    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        path = self._child(parent_inode, name)
        try:
            ino = self._ino(os.lstat(path).st_ino)
            os.rmdir(path)
        except OSError as exc:
            raise _fail(exc) from None
        self._drop_path(path, ino)

    async def symlink(
        self,
        parent_inode: pyfuse3.InodeT,
        name: bytes,
        target: bytes,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        try:
            os.symlink(os.fsdecode(target), path)
            os.chown(path, ctx.uid, ctx.gid, follow_symlinks=False)
        except OSError as exc:
            raise _fail(exc) from None
        return self._entry(path)

    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: bytes,
        parent_inode_new: pyfuse3.InodeT,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        try:
            ino = self._ino(os.lstat(old).st_ino)
            replaced = None
            with contextlib.suppress(FileNotFoundError):
                replaced = self._ino(os.lstat(new).st_ino)
            os.rename(old, new)
        except OSError as exc:
            raise _fail(exc) from None
        if replaced is not None:
            self._drop_path(new, replaced)
        self._drop_path(old, ino)
        if ino in self.paths:
            self.paths[ino].add(new)
        if stat_m.S_ISDIR(os.lstat(new).st_mode):
            # Paths of known inodes below the directory move with it.
            prefix = old + os.sep
            for paths in self.paths.values():
                for p in [p for p in paths if p.startswith(prefix)]:
                    paths.discard(p)
                    paths.add(new + os.sep + p[len(prefix) :])

    async def link(
        self,
        inode: pyfuse3.InodeT,
        new_parent_inode: pyfuse3.InodeT,
        new_name: bytes,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        path = self._child(new_parent_inode, new_name)
        try:
            os.link(self._path(inode), path, follow_symlinks=False)
        except OSError as exc:
            raise _fail(exc) from None
        return self._entry(path)

    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        try:
            fd = os.open(self._path(inode), flags & ~os.O_CREAT)
        except OSError as exc:
            raise _fail(exc) from None
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fd))

    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._child(parent_inode, name)
        try:
            fd = os.open(path, flags | os.O_CREAT, mode & ~ctx.umask)
            os.fchown(fd, ctx.uid, ctx.gid)
        except OSError as exc:
            raise _fail(exc) from None
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fd)), self._entry(path)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        try:
            return os.pread(fh, size, off)
        except OSError as exc:
            raise _fail(exc) from None

    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        try:
            return os.pwrite(fh, buf, off)
        except OSError as exc:
            raise _fail(exc) from None

    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        return None

    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        try:
            (os.fdatasync if datasync else os.fsync)(fh)
        except OSError as exc:
            raise _fail(exc) from None

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        try:
            os.close(fh)
        except OSError as exc:
            raise _fail(exc) from None

    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        path = self._path(inode)
        entries: list[tuple[str, pyfuse3.EntryAttributes]] = []
        try:
            with os.scandir(path) as it:
                for d in it:
                    try:
                        entries.append((d.name, self._attrs(d.stat(follow_symlinks=False))))
                    except FileNotFoundError:
                        continue
        except OSError as exc:
            raise _fail(exc) from None
        entries.sort(key=lambda e: e[0])
        dots = [(".", self._lstat(path)), ("..", self._lstat(os.path.dirname(path)))]
        if inode == pyfuse3.ROOT_INODE:
            dots[1] = ("..", dots[0][1])
        entries[:0] = dots
        fh = self.next_dir_fh
        self.next_dir_fh += 1
        self.dirs[fh] = (path, entries)
        return pyfuse3.FileHandleT(fh)

    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        path, entries = self.dirs.get(fh, ("", []))
        for i in range(start_id, len(entries)):
            name, attrs = entries[i]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, i + 1):
                break
            # readdirplus: each entry passed on (but . and ..) is one more
            # kernel lookup reference.
            if name not in (".", ".."):
                self._remember(attrs.st_ino, os.path.join(path, name))

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self.dirs.pop(fh, None)

    async def fsyncdir(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        return None

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        try:
            s = os.statvfs(self.source)
        except OSError as exc:
            raise _fail(exc) from None
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                     "f_files", "f_ffree", "f_favail", "f_namemax"):  # fmt: skip
            setattr(out, name, getattr(s, name))
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("source")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    ops = Passthrough(args.source)
    options = set(pyfuse3.default_options)
    options.add("fsname=passthroughfs")
    options.add("subtype=passthroughfs")
    for item in args.options:
        options.update(o for o in item.split(",") if o)
    pyfuse3.init(ops, args.mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    except BaseException:
        pyfuse3.close(unmount=True)
        raise
    pyfuse3.close(unmount=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
