"""The filesystem: POSIX operations on inodes, independent of FUSE.

``Filesystem`` is what the pyfuse3 adapter calls, one method per FUSE
request, with plain Python types in and out (``Entry`` for attributes).  It
raises ``FsError`` for POSIX errors and lets the project's store and crypto
exceptions through; the adapter maps both to errno values.  Tests drive it
directly, without a kernel.

It is a facade: each request goes to the part that owns it (namespace.py,
attrload.py, listing.py, dirops.py, files.py, reads.py, writes.py,
rename.py, commit.py ...), which it wires together here.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

import trio

from cosencfs.cache.content import ObjectContent
from cosencfs.cache.manager import CacheManager
from cosencfs.crypto.envelope import EnvelopeCodec, ObjectFormat, classify
from cosencfs.errors import CosEncFsError, FsError
from cosencfs.fs import names, xattrs
from cosencfs.fs.attrload import AttrLoader
from cosencfs.fs.attrs import Kind
from cosencfs.fs.commit import Committer
from cosencfs.fs.context import FsContext, FsOptions
from cosencfs.fs.dirindex import DirIndex
from cosencfs.fs.dirops import DirOps
from cosencfs.fs.dirtyrecord import DirtyRecords
from cosencfs.fs.entry import Entry, StatFs, make_entry, make_statfs
from cosencfs.fs.files import Files
from cosencfs.fs.handles import SETID_BITS
from cosencfs.fs.inode import Inode
from cosencfs.fs.listing import Listings
from cosencfs.fs.namespace import Namespace
from cosencfs.fs.parts import Parts
from cosencfs.fs.reads import Reader
from cosencfs.fs.recovery import RecoveryReport, recover
from cosencfs.fs.rename import Renamer
from cosencfs.fs.special import Specials
from cosencfs.fs.stats import collect_stats
from cosencfs.fs.upload import Uploader
from cosencfs.fs.window import UploadWindow
from cosencfs.fs.writeback import WriteBack
from cosencfs.fs.writes import Writer
from cosencfs.store.base import ObjectStore

log = logging.getLogger(__name__)


class SyncError(CosEncFsError):
    """Some dirty files could not be uploaded (they stay in the journal)."""


@dataclass(slots=True)
class _DirHandle:
    node: Inode
    entries: list[tuple[str, Inode]]


class Filesystem:
    def __init__(
        self,
        store: ObjectStore,
        codec: EnvelopeCodec,
        cache: CacheManager,
        options: FsOptions,
    ) -> None:
        ctx = self.ctx = FsContext(store, codec, cache, options)
        self.ns = Namespace(ctx)
        self.attrs = AttrLoader(ctx, self.ns)
        self.dirindex = DirIndex(ctx, self.attrs)
        self.listings = Listings(ctx, self.ns, self.attrs, self.dirindex)
        self.window = UploadWindow(min(options.upload_workers or 64, options.connections))
        self.uploader = Uploader(
            store,
            cache.journal,
            single_put_max=options.single_put_max,
            part_concurrency=options.part_concurrency,
            window=self.window,
        )
        self.records = DirtyRecords(ctx, self.uploader)
        self.committer = Committer(ctx, self.attrs, self.records, self.uploader)
        self.writeback = WriteBack(
            self._commit,
            delay=options.writeback_delay,
            max_dirty_age=options.max_dirty_age,
            limiter=self.window.limiter,
        )
        self.reader = Reader(ctx, self.attrs)
        self.writer = Writer(ctx, self.attrs, self.records, self.writeback, self.uploader)
        parts = Parts(
            ctx, self.ns, self.attrs, self.listings, self.records, self.writeback, self.writer
        )
        self.dirops = DirOps(parts)
        self.files = Files(parts)
        self.renamer = Renamer(parts)
        self.specials = Specials(parts)
        self._dirs: dict[int, _DirHandle] = {}
        self._next_dh = 1
        #: getxattr calls answered (``stats`` "fuse"): ``ls -l`` must not cost one per file.
        self.getxattrs = 0
        cache.on_evict = self._evicted

    async def _commit(self, node: Inode) -> None:
        await self.committer.commit(node)
        if not node.is_dir:
            # Batched: the directory's index is rewritten once its files are quiet.
            self.dirindex.changed(node.parent)

    @property
    def options(self) -> FsOptions:
        return self.ctx.options

    def _evicted(self, v: ObjectContent) -> None:
        node = v.owner
        if isinstance(node, Inode) and node.file is not None and node.file.clean is v:
            node.file.clean = None
            self.ns.compact(node)

    # -- lifecycle -------------------------------------------------------------

    async def recover(self) -> RecoveryReport:
        """Finish uploads a crashed earlier run left in the journal."""
        return await recover(self.ctx, self.uploader)

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the background workers (write-back) in ``nursery``."""
        self.ctx.nursery = nursery
        await nursery.start(self.writeback.run)
        await nursery.start(self.ctx.deleter.run)
        await nursery.start(self.dirindex.run)
        # The first files created find their cache files made (a burst of
        # creates right after the mount made its first ~30 on the loop).
        self.ctx.cache.spares.prime()

    def dirty_inodes(self) -> list[Inode]:
        return [n for n in self.ctx.table.all() if n.dirty and not n.unlinked]

    async def sync_all(self) -> None:
        """Upload everything dirty now and wait (umount, ``cosencfs sync``).

        One file failing does not stop the others; the error at the end says
        how many failed.
        """
        failures: list[str] = []

        async def one(node: Inode) -> None:
            try:
                await self.writeback.flush(node, bounded=True)
            except Exception as exc:
                failures.append(f"{self.ctx.key_of(node)}: {exc}")
                log.warning("upload of %r failed: %s", node.name, exc)

        async with trio.open_nursery() as nursery:
            for node in self.dirty_inodes():
                nursery.start_soon(one, node)
        try:
            await self.ctx.deleter.flush()
        except CosEncFsError as exc:
            failures.append(f"deletes: {exc}")
        await self.dirindex.flush()
        if failures:
            raise SyncError(f"{len(failures)} files could not be uploaded (first: {failures[0]})")

    # -- attributes ------------------------------------------------------------

    def entry(self, node: Inode) -> Entry:
        return make_entry(node, self.ctx.options)

    async def lookup(self, parent: int, name: bytes) -> Entry:
        if name == b".":
            node = self.ns.inode(parent)
            node.nlookup += 1
            return self.entry(node)
        if name == b"..":
            node = self.ns.inode(parent)
            up = node.parent or node
            up.nlookup += 1
            return self.entry(up)
        return self.entry(await self.dirops.lookup(parent, names.existing_name(name)))

    async def getattr(self, ino: int) -> Entry:
        node = self.ns.inode(ino)
        if not node.attrs_known:
            self.attrs.stat_ahead(node)
        await self.attrs.ensure(node)
        return self.entry(node)

    async def setattr(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> Entry:
        node = self.ns.inode(ino)
        await self.attrs.ensure(node)
        if size is not None:
            if node.is_dir:
                raise FsError(errno.EISDIR)
            if node.kind is Kind.SYMLINK or node.kind.special:
                raise FsError(errno.EINVAL)
            await self.writer.truncate(node, size)
        a = node.attrs
        meta_changed = False
        if mode is not None:
            a.mode = stat.S_IFMT(a.mode) | stat.S_IMODE(mode)
            meta_changed = True
        if uid is not None:
            a.uid = uid
            meta_changed = True
        if gid is not None:
            a.gid = gid
            meta_changed = True
        if mtime_ns is not None:
            a.mtime_ns = mtime_ns
            meta_changed = True
        if atime_ns is not None:
            a.atime_ns = atime_ns  # kept in memory only: COS has no atime
        if meta_changed or size is not None:
            a.ctime_ns = self.ctx.now_ns()
        if meta_changed and not node.unlinked and node.ino != 1:
            node.meta_gen += 1
            self.writeback.schedule(node)
        return self.entry(node)

    # -- names -----------------------------------------------------------------

    async def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Entry:
        return self.entry(await self.dirops.mkdir(parent, names.new_name(name), mode, uid, gid))

    async def rmdir(self, parent: int, name: bytes) -> None:
        await self.dirops.rmdir(parent, names.existing_name(name))

    async def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Entry:
        try:
            text = target.decode("utf-8")
        except UnicodeDecodeError:
            raise FsError(errno.EINVAL, "symlink target is not valid UTF-8") from None
        node = await self.dirops.symlink(parent, names.new_name(name), text, uid, gid)
        return self.entry(node)

    async def readlink(self, ino: int) -> bytes:
        return (await self.dirops.readlink(ino)).encode("utf-8")

    async def unlink(self, parent: int, name: bytes) -> None:
        d = self.ns.directory(parent)
        await self.dirops.unlink(d, names.existing_name(name))

    async def rename(
        self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int
    ) -> None:
        await self.renamer.rename(
            old_parent, names.existing_name(old_name), new_parent, names.new_name(new_name), flags
        )

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Entry:
        raise FsError(errno.EPERM, "hard links cannot be stored in COS")

    async def mknod(
        self, parent: int, name: bytes, mode: int, rdev: int, uid: int, gid: int
    ) -> Entry:
        """A fifo, socket or device node (fs/special.py); a regular file as create() makes."""
        if stat.S_ISREG(mode):
            fh, entry = await self.create(parent, name, mode, os.O_WRONLY, uid, gid)
            await self.release(fh)
            return entry
        node = await self.specials.mknod(parent, names.new_name(name), mode, rdev, uid, gid)
        return self.entry(node)

    def forget(self, items: list[tuple[int, int]]) -> None:
        for ino, n in items:
            self.ns.forget(ino, n)

    # -- files -----------------------------------------------------------------

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        if self.ns.inode(ino).kind.special:
            # The kernel opens fifos, sockets and devices itself: never reached via FUSE.
            raise FsError(errno.ENXIO, "special files have no content in COS")
        h, keep = await self.files.open(ino, flags)
        # After open's revalidating HEAD, so the metadata is fresh and costs
        # nothing extra; with O_TRUNC the content is already local and new.
        try:
            self.reader.check_open(h.node)
        except BaseException:
            await self.files.release(h.fh)
            raise
        return h.fh, keep

    async def create(
        self, parent: int, name: bytes, mode: int, flags: int, uid: int, gid: int
    ) -> tuple[int, Entry]:
        h, node = await self.files.create(parent, names.new_name(name), mode, flags, uid, gid)
        return h.fh, self.entry(node)

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        return await self.reader.read(self.files.handles.get(fh), offset, size)

    def direct_io(self, fh: int) -> bool:
        """Whether the kernel is to bypass its page cache for handle ``fh`` (fs/handles.py)."""
        return self.files.handles.get(fh).direct

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        h = self.files.handles.get(fh)
        if h.direct and h.node.attrs.mode & SETID_BITS:
            await self._drop_setid(h.node)
        return await self.writer.write(h, offset, data)

    async def _drop_setid(self, node: Inode) -> None:
        """A write must drop set-ID bits; on a direct handle the kernel leaves it to us.

        The kernel keeps them for a writer with CAP_FSETID, which the daemon
        cannot see at write time: it drops them for every writer, the safe
        side (only bits set while the handle was open get here: a file
        opened with them is written through the page cache, whose path has
        the kernel drop them as usual).  Set-group-ID without group execute
        marks mandatory locking, not privilege, and stays, as in Linux.
        """
        mode = node.attrs.mode
        drop = stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0)
        if mode & drop:
            await self.setattr(node.ino, mode=stat.S_IMODE(mode) & ~drop)
            await self.ctx.invalidate_attrs(node.ino)

    async def flush(self, fh: int) -> None:
        await self.files.flush(fh)

    async def release(self, fh: int) -> None:
        self.reader.release(fh)  # (its read-ahead's GETs still running: cancelled)
        await self.files.release(fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.files.fsync(fh)

    # -- directories -------------------------------------------------------------

    async def opendir(self, ino: int) -> int:
        d = self.ns.directory(ino)
        await self.listings.ensure_listed(d)
        entries = sorted(d.as_dir.children.items())
        # Only entries whose type the listing cannot tell need a HEAD now; the
        # others get theirs when something stats them (rm -r and find do not).
        await self.attrs.ensure_many([n for _, n in entries if not self.attrs.kind_certain(n)])
        entries = [(name, n) for name, n in entries if not n.unlinked]
        fh = self._next_dh
        self._next_dh += 1
        self._dirs[fh] = _DirHandle(d, entries)
        return fh

    def readdir(self, fh: int, start: int) -> Iterator[tuple[bytes, Entry, int]]:
        """Entries from offset ``start``; offsets are stable for the handle's life.

        Lazy: the kernel takes a page of entries per call (about 25 with
        attributes), so building every remaining entry each time made a
        listing quadratic in the directory's size.
        """
        try:
            dh = self._dirs[fh]
        except KeyError:
            raise FsError(errno.EBADF) from None
        return (
            (name.encode("utf-8"), self.entry(node), i + 1)
            for i, (name, node) in enumerate(itertools.islice(dh.entries, start, None), start=start)
        )

    def readdir_looked_up(self, ino: int) -> None:
        """The kernel accepted an entry from readdir: one more lookup."""
        node = self.ctx.table.get(ino)
        if node is not None:
            node.nlookup += 1

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- misc ------------------------------------------------------------------

    def statfs(self) -> StatFs:
        return make_statfs(len(self.ctx.table))

    async def object_format(self, ino: int) -> str:
        """How a file's object is stored: cosencfs, sdk, plain, foreign or damaged."""
        node = self.ns.inode(ino)
        if node.is_dir:
            raise FsError(errno.ENODATA)
        await self.attrs.ensure(node)
        meta = None if node.remote is None else node.remote.metadata
        if meta is None or node.data_dirty:
            return ObjectFormat.COSENCFS.value
        return classify(meta).value

    def stats(self) -> dict[str, object]:
        """What ``cosencfs stats`` shows."""
        return collect_stats(self)

    # -- extended attributes: user.* and the control channel (fs/xattrs.py) --------

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        self.getxattrs += 1
        return await xattrs.getxattr(self, ino, name)

    async def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        await xattrs.setxattr(self, ino, name, value)

    async def listxattr(self, ino: int) -> list[bytes]:
        return await xattrs.listxattr(self, ino)

    async def removexattr(self, ino: int, name: bytes) -> None:
        await xattrs.removexattr(self, ino, name)
