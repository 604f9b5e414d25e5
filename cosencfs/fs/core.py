"""The filesystem: POSIX operations on inodes, independent of FUSE.

``Filesystem`` is what the pyfuse3 adapter calls, one method per FUSE
request, with plain Python types in and out (``Entry`` for attributes).  It
raises ``FsError`` for POSIX errors and lets the project's store and crypto
exceptions through; the adapter maps both to errno values.  Tests drive it
directly, without a kernel.
"""

from __future__ import annotations

import errno
import logging
import stat
from dataclasses import dataclass

import trio

from cosencfs.cache.content import ObjectContent
from cosencfs.cache.manager import CacheManager
from cosencfs.crypto.envelope import EnvelopeCodec, ObjectFormat, classify
from cosencfs.errors import CosEncFsError, FsError
from cosencfs.fs.attrs import Kind
from cosencfs.fs.context import FsContext, FsOptions
from cosencfs.fs.files import Files
from cosencfs.fs.inode import Inode
from cosencfs.fs.names import MAX_NAME_BYTES, decode_name
from cosencfs.fs.namespace import Namespace
from cosencfs.fs.recovery import RecoveryReport, recover
from cosencfs.fs.rename import Renamer
from cosencfs.store.base import ObjectStore

log = logging.getLogger(__name__)


class SyncError(CosEncFsError):
    """Some dirty files could not be uploaded (they stay in the journal)."""


BLOCK = 512
BLKSIZE = 128 * 1024


@dataclass(slots=True, frozen=True)
class Entry:
    """Attributes as the kernel wants them."""

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
        self.ctx = FsContext(store, codec, cache, options)
        self.ns = Namespace(self.ctx)
        self.files = Files(self.ctx, self.ns)
        self.renamer = Renamer(self.ctx, self.ns, self.files)
        self._dirs: dict[int, _DirHandle] = {}
        self._next_dh = 1
        cache.on_evict = self._evicted

    @property
    def options(self) -> FsOptions:
        return self.ctx.options

    def _evicted(self, v: ObjectContent) -> None:
        node = v.owner
        if isinstance(node, Inode) and node.clean is v:
            node.clean = None

    # -- lifecycle -------------------------------------------------------------

    async def recover(self) -> RecoveryReport:
        """Finish uploads a crashed earlier run left in the journal."""
        return await recover(self.ctx, self.files)

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the background workers (write-back) in ``nursery``."""
        self.ctx.nursery = nursery
        await nursery.start(self.files.writeback.run)
        await nursery.start(self.ctx.deleter.run)

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
                await self.files.writeback.flush(node)
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
        if failures:
            raise SyncError(f"{len(failures)} files could not be uploaded (first: {failures[0]})")

    # -- attributes ------------------------------------------------------------

    def entry(self, node: Inode) -> Entry:
        opts = self.ctx.options
        a = node.attrs
        if node.is_dir:
            size, nlink = 0, 1
        elif node.kind is Kind.SYMLINK:
            size, nlink = node.size, 1
        else:
            size, nlink = node.file_size, 1
        if node.unlinked:
            nlink = 0
        return Entry(
            ino=node.ino,
            mode=a.mode,
            nlink=nlink,
            uid=a.uid,
            gid=a.gid,
            size=size,
            atime_ns=a.atime_ns,
            mtime_ns=a.mtime_ns,
            ctime_ns=a.ctime_ns,
            entry_timeout=opts.entry_timeout,
            # Attributes still to be HEADed are defaults: the kernel must ask.
            attr_timeout=opts.attr_timeout if node.attrs_known else 0.0,
        )

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
        return self.entry(await self.ns.lookup(parent, decode_name(name)))

    async def getattr(self, ino: int) -> Entry:
        node = self.ns.inode(ino)
        if not node.attrs_known:
            self.ns.stat_ahead(node)
        await self.ns.ensure_attrs(node)
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
        await self.ns.ensure_attrs(node)
        if size is not None:
            if node.is_dir:
                raise FsError(errno.EISDIR)
            if node.kind is Kind.SYMLINK:
                raise FsError(errno.EINVAL)
            await self.files.truncate(node, size)
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
            self.files.writeback.schedule(node)
        return self.entry(node)

    # -- names -----------------------------------------------------------------

    async def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Entry:
        return self.entry(await self.ns.mkdir(parent, decode_name(name), mode, uid, gid))

    async def rmdir(self, parent: int, name: bytes) -> None:
        await self.ns.rmdir(parent, decode_name(name))

    async def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Entry:
        try:
            text = target.decode("utf-8")
        except UnicodeDecodeError:
            raise FsError(errno.EINVAL, "symlink target is not valid UTF-8") from None
        node = await self.ns.symlink(parent, decode_name(name), text, uid, gid)
        return self.entry(node)

    async def readlink(self, ino: int) -> bytes:
        return (await self.ns.readlink(ino)).encode("utf-8")

    async def unlink(self, parent: int, name: bytes) -> None:
        d = self.ns.directory(parent)
        text = decode_name(name)
        node = await self.ns.child(d, text)
        if node is None:
            raise FsError(errno.ENOENT)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        async with node.upload_lock:
            if node.unlinked:
                raise FsError(errno.ENOENT)
            key = self.ctx.key_of(node)
            self.files.writeback.cancel(node)
            self.files.forget_record(node)
            had_remote = node.remote is not None
            if node.open_count and had_remote:
                # Readers may still need bytes of the object: delete on last close.
                node.pending_delete = key
                self.ctx.deleter.hold(key)
            elif had_remote:
                self.ctx.deleter.queue(key)
                node.remote = None
            self.ctx.journal.delete_attrs(key)
            node.attrs.ctime_ns = self.ctx.now_ns()
            self.ns.detach(node)
        self.ns.touch_dir(d)

    async def rename(
        self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int
    ) -> None:
        await self.renamer.rename(
            old_parent, decode_name(old_name), new_parent, decode_name(new_name), flags
        )

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Entry:
        raise FsError(errno.EPERM, "hard links cannot be stored in COS")

    def forget(self, items: list[tuple[int, int]]) -> None:
        for ino, n in items:
            self.ns.forget(ino, n)

    # -- files -----------------------------------------------------------------

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        h, keep = await self.files.open(ino, flags)
        # After open's revalidating HEAD, so the metadata is fresh and costs
        # nothing extra; with O_TRUNC the content is already local and new.
        try:
            self.ns.check_open(h.node)
        except BaseException:
            await self.files.release(h.fh)
            raise
        return h.fh, keep

    async def create(
        self, parent: int, name: bytes, mode: int, flags: int, uid: int, gid: int
    ) -> tuple[int, Entry]:
        h, node = await self.files.create(parent, decode_name(name), mode, flags, uid, gid)
        return h.fh, self.entry(node)

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        return await self.files.read(fh, offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        return await self.files.write(fh, offset, data)

    async def flush(self, fh: int) -> None:
        await self.files.flush(fh)

    async def release(self, fh: int) -> None:
        await self.files.release(fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.files.fsync(fh)

    # -- directories -------------------------------------------------------------

    async def opendir(self, ino: int) -> int:
        d = self.ns.directory(ino)
        await self.ns.ensure_listed(d)
        assert d.children is not None
        entries = sorted(d.children.items())
        # Only entries whose type the listing cannot tell need a HEAD now; the
        # others get theirs when something stats them (rm -r and find do not).
        await self.ns.ensure_attrs_many([n for _, n in entries if not self.ns.kind_certain(n)])
        entries = [(name, n) for name, n in entries if not n.unlinked]
        fh = self._next_dh
        self._next_dh += 1
        self._dirs[fh] = _DirHandle(d, entries)
        return fh

    def readdir(self, fh: int, start: int) -> list[tuple[bytes, Entry, int]]:
        """Entries from offset ``start``; offsets are stable for the handle's life."""
        try:
            dh = self._dirs[fh]
        except KeyError:
            raise FsError(errno.EBADF) from None
        return [
            (name.encode("utf-8"), self.entry(node), i + 1)
            for i, (name, node) in enumerate(dh.entries[start:], start=start)
        ]

    def readdir_looked_up(self, ino: int) -> None:
        """The kernel accepted an entry from readdir: one more lookup."""
        node = self.ctx.table.get(ino)
        if node is not None:
            node.nlookup += 1

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- misc ------------------------------------------------------------------

    def statfs(self) -> StatFs:
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
            ffree=files - len(self.ctx.table),
            namemax=MAX_NAME_BYTES,
        )

    async def object_format(self, ino: int) -> str:
        """How a file's object is stored: cosencfs, sdk, plain, foreign or damaged."""
        node = self.ns.inode(ino)
        if node.is_dir:
            raise FsError(errno.ENODATA)
        await self.ns.ensure_attrs(node)
        r = node.remote
        if r is None or r.metadata is None or node.data_dirty:
            return ObjectFormat.COSENCFS.value
        return classify(r.metadata).value

    def stats(self) -> dict[str, object]:
        """What ``cosencfs stats`` shows."""
        cache = self.ctx.cache
        counters = self.ctx.store.counters.snapshot()
        dirty = self.dirty_inodes()
        wb = self.files.writeback.stats
        fetcher = cache.fetcher
        lookups = fetcher.hits + fetcher.misses
        return {
            "store": counters.as_dict(),
            "cache": {
                "bytes": cache.usage(),
                "limit": cache.limit_bytes,
                "versions": len(cache.versions),
                "dirty_layers": len(cache.layers),
                "hits": fetcher.hits,
                "misses": fetcher.misses,
                "hit_ratio": fetcher.hits / lookups if lookups else 0.0,
                "fetched_bytes": fetcher.fetched_bytes,
            },
            "dirty": {
                "files": len(dirty),
                "bytes": sum(n.file_size for n in dirty if n.data_dirty),
                "journal_records": cache.journal.dirty_count(),
            },
            "uploads": {
                "queued": self.files.writeback.queued,
                "done": wb.uploads,
                "failed": wb.failures,
                "failing_now": len(wb.failing),
                "last_error": wb.last_error,
            },
            "deletes": {
                "pending": len(self.ctx.deleter),
                "done": self.ctx.deleter.deleted,
                "failed": self.ctx.deleter.failures,
            },
            "inodes": len(self.ctx.table),
            "fuse": {
                "reads": self.files.reads,
                "read_bytes": self.files.read_bytes,
                "writes": self.files.writes,
                "write_bytes": self.files.write_bytes,
            },
        }
