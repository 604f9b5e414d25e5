"""File content: open, read, write, truncate, close, fsync and the commit to COS.

Reading a file makes a *clean* version of it in the cache (the object's own
key; bytes fetched on demand).  The first write makes a *dirty* version under
a fresh data key: bytes already cached are re-encrypted into it, missing ones
are fetched and re-encrypted when needed.  A commit fills every missing byte,
seals the version (no further writes to it; a later write forks a new one)
and uploads the cache file as it is.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from dataclasses import dataclass

import trio

from cosencfs.cache.content import ContentVersion, Source
from cosencfs.cache.journal import DirtyRecord, SourceRecord
from cosencfs.crypto.ctr import DataKey
from cosencfs.crypto.envelope import ObjectFormat, classify
from cosencfs.errors import DamagedObjectError, FsError, NotFoundError, TransientError
from cosencfs.fs.attrs import FILE_CONTENT_TYPE, META_SIZE, Attrs, Kind, attrs_to_meta
from cosencfs.fs.context import FsContext
from cosencfs.fs.inode import Inode, Remote
from cosencfs.fs.namespace import Namespace
from cosencfs.fs.policy import check_servable
from cosencfs.fs.stream import StreamUpload
from cosencfs.fs.writeback import Uploader, WriteBack

log = logging.getLogger(__name__)

#: Largest file cosencfs writes: COS's object limit.
MAX_FILE_SIZE = 48_828_125 * 1024 * 1024
THREAD_WRITE = 1024 * 1024


@dataclass(slots=True, eq=False)
class Handle:
    fh: int
    node: Inode
    writable: bool
    append: bool
    #: Written through this handle since its last flush (close).
    wrote: bool = False
    #: Sequential-read detection and readahead state.
    seq_end: int = 0
    window: int = 0
    ahead_until: int = 0


class Files:
    def __init__(self, ctx: FsContext, ns: Namespace) -> None:
        self.ctx = ctx
        self.ns = ns
        opts = ctx.options
        self.uploader = Uploader(
            ctx.store,
            ctx.journal,
            single_put_max=opts.single_put_max,
            part_concurrency=opts.part_concurrency,
        )
        self.writeback = WriteBack(
            self.commit,
            delay=opts.writeback_delay,
            max_dirty_age=opts.max_dirty_age,
            workers=opts.upload_workers,
        )
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1
        #: Requests served (average sizes tell how well the kernel batches).
        self.reads = self.read_bytes = self.writes = self.write_bytes = 0
        self._forking: dict[int, trio.Event] = {}

    def handle(self, fh: int) -> Handle:
        try:
            return self.handles[fh]
        except KeyError:
            raise FsError(errno.EBADF) from None

    def _new_handle(self, node: Inode, flags: int) -> Handle:
        acc = flags & os.O_ACCMODE
        h = Handle(
            self._next_fh,
            node,
            writable=acc in (os.O_WRONLY, os.O_RDWR),
            append=bool(flags & os.O_APPEND),
        )
        self._next_fh += 1
        self.handles[h.fh] = h
        node.open_count += 1
        return h

    # -- open / create -----------------------------------------------------------

    async def open(self, ino: int, flags: int) -> tuple[Handle, bool]:
        """Open; returns the handle and whether the kernel may keep its page cache."""
        node = self.ns.inode(ino)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        keep_cache = await self._revalidate(node)
        h = self._new_handle(node, flags)
        if flags & os.O_TRUNC and h.writable and node.file_size:
            await self.truncate(node, 0)
            h.wrote = True
            keep_cache = False
        return h, keep_cache

    async def _revalidate(self, node: Inode) -> bool:
        """Close-to-open: a file not open here is checked against COS (one HEAD)."""
        if node.open_count or node.dirty or node.remote is None:
            return True
        if trio.current_time() - node.validated_at < self.ctx.options.open_revalidate:
            return True
        key = self.ctx.key_of(node)
        try:
            info = await self.ctx.store.head(key)
        except TransientError as exc:
            # COS unreachable: what is cached stays readable; uncached bytes
            # will fail with EIO when fetched.
            log.warning("cannot revalidate %r (%s); opening the cached version", key, exc)
            return True
        except NotFoundError:
            if node.parent is not None:
                self.ns.detach(node)
                self.ctx.invalidate_entry(node.parent.ino, node.name)
            raise FsError(errno.ENOENT, f"{key!r} was deleted") from None
        old = node.remote
        unchanged = old.etag == info.etag and old.size == info.size
        self.ns.apply_head(node, info)
        if not unchanged:
            # The kernel still has the old size: reads would stop there.
            await self.ctx.invalidate_attrs(node.ino)
        return unchanged

    async def create(
        self, parent_ino: int, name: str, mode: int, flags: int, uid: int, gid: int
    ) -> tuple[Handle, Inode]:
        d = self.ns.directory(parent_ino)
        await self.ns.check_absent(d, name)
        await self.ctx.deleter.settle(self.ctx.child_key(d, name, is_dir=False))
        now = self.ctx.now_ns()
        attrs = Attrs(stat.S_IFREG | stat.S_IMODE(mode), uid, gid, now, now, now)
        node = self.ctx.table.new(Kind.FILE, d, name, attrs)
        node.attrs_known = True
        dk = DataKey.generate()
        self.set_version(
            node, self.ctx.cache.create(dk, self.ctx.codec.seal(dk), 0, None, dirty=True)
        )
        self.ns.attach(d, name, node)
        self.ns.touch_dir(d)
        node.nlookup += 1
        h = self._new_handle(node, flags)
        h.wrote = True  # creating is a change: close() journals it even without a write
        self.writeback.schedule(node)
        return h, node

    # -- reading -----------------------------------------------------------------

    async def clean_version(self, node: Inode) -> ContentVersion | None:
        """The version reads come from; a clean one is made on first use."""
        if node.version is not None:
            return node.version
        r = node.remote
        if r is None or r.size == 0:
            return None
        if r.metadata is None:
            await self.ns.ensure_attrs(node)
            # Another task may have made the version while we waited.
            return await self.clean_version(node) if node.remote is not None else None
        key = self.ctx.key_of(node)
        written = r.metadata.get(META_SIZE)
        if written is not None and written != str(r.size):
            # CTR has no integrity check: a truncated or extended body would
            # decrypt "fine". The size recorded at upload catches it.
            raise DamagedObjectError(
                f"object {key!r} is {r.size} bytes but was written with {written}"
            )
        check_servable(self.ctx.options, key, r.metadata, r.size)
        if classify(r.metadata) is ObjectFormat.PLAIN:
            # Plaintext object (not made by an encryption client): cached under a
            # throw-away key, so the cache still holds only ciphertext.
            dk = DataKey.generate()
            source = Source(key, r.etag, None, r.size, {})
            log.info("%r has no encryption envelope; reading it as plaintext", key)
        else:
            dk = self.ctx.codec.open(r.metadata, key=key)
            source = Source(key, r.etag, dk, r.size, dict(r.metadata))
        v = self.ctx.cache.create(dk, dict(r.metadata), r.size, source, dirty=False, sealed=True)
        self.set_version(node, v)
        return v

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self.handle(fh)
        node = h.node
        v = await self.clean_version(node)
        if v is None or offset >= v.size:
            return b""
        v.pins += 1
        self.reads += 1
        try:
            self._readahead(h, v, offset, size)
            data = await self.ctx.cache.read(v, offset, size)
            self.read_bytes += len(data)
            return data
        finally:
            v.pins -= 1
            self._maybe_evict()

    def _readahead(self, h: Handle, v: ContentVersion, offset: int, size: int) -> None:
        """Grow a window on sequential reads; none at all for random ones."""
        opts = self.ctx.options
        if offset == h.seq_end:
            h.window = min(max(h.window * 2, opts.readahead_min), opts.readahead_max)
        else:
            h.window = 0
            h.ahead_until = 0
        end = offset + size
        h.seq_end = end
        if not h.window or self.ctx.nursery is None:
            return
        # Top the window up only once half of it has been consumed, so each
        # prefetch is a few large GETs rather than one small GET per read.
        if h.ahead_until - end > h.window // 2:
            return
        start = max(end, h.ahead_until)
        stop = min(end + h.window, v.limit)
        if stop > start:
            self.ctx.cache.prefetch(self.ctx.nursery, v, start, stop)
            h.ahead_until = stop

    # -- writing -----------------------------------------------------------------

    async def writable_version(
        self, node: Inode, upto: int | None = None, at: int | None = None
    ) -> ContentVersion:
        """The version writes go to: the current one unless it is sealed (or,
        for a write ``at`` an offset or a truncate to ``upto``, unless those
        bytes were already sent in a streamed part)."""
        while True:
            v = node.version
            if v is not None and not v.sealed and _open_at(v, upto, at):
                return v
            ev = self._forking.get(node.ino)
            if ev is not None:
                await ev.wait()
                continue
            self._forking[node.ino] = ev = trio.Event()
            try:
                dk = DataKey.generate()
                envelope = self.ctx.codec.seal(dk)
                if v is None:
                    if node.remote is not None and node.remote.metadata is None:
                        await self.ns.ensure_attrs(node)
                    source = self.ns.source_of(node)
                    size = node.file_size if upto is None else min(upto, node.file_size)
                    new = self.ctx.cache.create(dk, envelope, size, source, dirty=True)
                else:
                    limit = v.size if upto is None else min(upto, v.size)
                    new = await self.ctx.cache.fork(v, dk, envelope, limit)
                    if v.stream is not None:
                        v.stream.abandon()
                    self._retire(v)
                self.set_version(node, new)
                return new
            finally:
                del self._forking[node.ino]
                ev.set()

    @staticmethod
    def set_version(node: Inode, v: ContentVersion) -> None:
        node.version = v
        v.owner = node

    def _retire(self, v: ContentVersion) -> None:
        """An old version nobody needs once its upload (if any) is done."""
        if v.pins == 0 and not (v.dirty and not v.sealed):
            self.ctx.cache.discard(v)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        h = self.handle(fh)
        if not h.writable:
            raise FsError(errno.EBADF)
        node = h.node
        while True:
            v = await self.writable_version(node, at=None if h.append else offset)
            async with v.lock:
                if h.append:
                    offset = v.size
                if v.sealed or node.version is not v or offset < v.sealed_upto:
                    continue  # sealed meanwhile (a commit, a streamed part): fork
                if offset + len(data) > MAX_FILE_SIZE:
                    raise FsError(errno.EFBIG)
                if len(data) >= THREAD_WRITE:
                    await trio.to_thread.run_sync(
                        v.write_plain, offset, data, limiter=self.ctx.cache.io_limiter
                    )
                else:
                    v.write_plain(offset, data)
                self._stream(node, v)
                break
        h.wrote = True
        self.writes += 1
        self.write_bytes += len(data)
        self._modified(node)
        return len(data)

    def _stream(self, node: Inode, v: ContentVersion) -> None:
        """Send finished parts of a large file still being written (see stream.py)."""
        if isinstance(v.stream, StreamUpload):
            v.stream.pump()
            return
        nursery = self.ctx.nursery
        if (
            nursery is None
            or not self.ctx.options.stream_uploads
            or v.size <= self.uploader.single_put_max
            or v.source is not None
            or not v.present.contains(0, v.size)
        ):
            return
        meta = {**v.envelope, **attrs_to_meta(node.attrs)}
        v.stream = StreamUpload(
            self.ctx.store,
            self.ctx.journal,
            self.uploader.part_limiter,
            nursery,
            key=self.ctx.key_of(node),
            version=v,
            metadata=meta,
            content_type=FILE_CONTENT_TYPE,
            fid=node.fid,
        )
        v.stream.pump()

    def _modified(self, node: Inode) -> None:
        now = self.ctx.now_ns()
        node.attrs.mtime_ns = node.attrs.ctime_ns = now
        self.writeback.schedule(node, self.ctx.options.max_dirty_age if node.open_count else None)

    async def truncate(self, node: Inode, size: int) -> None:
        if size > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        if size == 0:
            dk = DataKey.generate()
            old = node.version
            self.set_version(
                node, self.ctx.cache.create(dk, self.ctx.codec.seal(dk), 0, None, dirty=True)
            )
            if old is not None:
                self._retire(old)
        else:
            while True:
                v = await self.writable_version(node, upto=size)
                async with v.lock:
                    if v.sealed or node.version is not v or size < v.sealed_upto:
                        continue
                    v.truncate(size)
                    break
        node.size = size
        self._modified(node)
        # truncate(2) returns with the change as durable as a close() would make it.
        self.record_dirty(node)

    # -- close / sync ------------------------------------------------------------

    async def flush(self, fh: int) -> None:
        """close(): make the dirty state survive a crash, and schedule the upload."""
        h = self.handle(fh)
        node = h.node
        # Only a handle that wrote journals: closing a file opened for reading
        # must not fail (or cost anything) because of someone else's writes.
        if h.wrote and node.dirty and not node.unlinked:
            h.wrote = False
            self.record_dirty(node)
            self.writeback.schedule(node)

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        node = h.node
        node.open_count -= 1
        if node.open_count:
            return
        if node.dirty and not node.unlinked:
            self.writeback.schedule(node)
        if node.pending_delete is not None:
            key, node.pending_delete = node.pending_delete, None
            self.ctx.deleter.release(key)
        if node.unlinked and node.version is not None and node.version.pins == 0:
            self.ctx.cache.discard(node.version)
            node.version = None
        self.ns.maybe_drop(node)
        self._maybe_evict()

    async def fsync(self, fh: int) -> None:
        h = self.handle(fh)
        if h.node.dirty and not h.node.unlinked:
            await self.writeback.flush(h.node)

    def record_dirty(self, node: Inode) -> None:
        v = node.version
        if v is None:
            return
        if not v.dirty and not node.meta_dirty:
            return
        key = self.ctx.key_of(node)
        signature = (key, v.vid, v.size, v.present.total, node.meta_gen)
        if node.journaled == signature:
            return
        src = None
        if v.source is not None:
            s = v.source
            src = SourceRecord(s.key, s.etag, dict(s.envelope), s.limit)
        if node.journaled is not None and node.journaled[1] != v.vid and self.ctx.nursery:
            # Only a multipart upload records an upload id: look only then.
            old = self.ctx.journal.get_dirty(node.fid) if _large(node.journaled) else None
            if old is not None and old.upload_id and old.vid != v.vid:
                # A multipart upload of a version that will never be completed.
                self.ctx.spawn(self.uploader.abort, old.key, old.upload_id)
        self.ctx.journal.put_dirty(
            DirtyRecord(
                fid=node.fid,
                key=key,
                vid=v.vid,
                size=v.size,
                present=v.present.to_list(),
                envelope=dict(v.envelope),
                attrs=attrs_to_meta(node.attrs),
                content_type=FILE_CONTENT_TYPE,
                source=src,
            )
        )
        node.journaled = signature

    def forget_record(self, node: Inode) -> None:
        self.ctx.journal.delete_dirty(node.fid)
        node.journaled = None

    # -- commit (called by write-back) -----------------------------------------

    async def commit(self, node: Inode) -> None:
        """Put ``node``'s content and attributes in COS."""
        async with node.upload_lock:
            if node.unlinked:
                return
            if node.is_dir:
                if node.meta_dirty and node.parent is not None:
                    await self.ns.put_marker(node)
                return
            v = node.version
            if v is not None and v.dirty:
                await self._commit_content(node, v)
            elif node.meta_dirty:
                await self._commit_attrs(node)

    async def _commit_content(self, node: Inode, v: ContentVersion) -> None:
        v.pins += 1
        try:
            if not v.sealed:
                while not v.complete:
                    await self.ctx.cache.fill_all(v)
                v.sealed = True
            key = self.ctx.key_of(node)
            gen = node.meta_gen
            meta = {**v.envelope, **attrs_to_meta(node.attrs), META_SIZE: str(v.size)}
            self.record_dirty(node)
            etag = None
            stream = v.stream
            if isinstance(stream, StreamUpload):
                v.stream = None
                if stream.key == key and v.size > self.uploader.single_put_max:
                    etag = await stream.finish(v.size, meta)
                else:
                    await stream.abandon_now()  # renamed, or shrank to a simple PUT
            if etag is None:
                etag = await self._upload(node, v, key, meta)
        finally:
            v.pins -= 1
        node.remote = Remote(etag, v.size, time.time(), meta)
        node.size = v.size
        node.meta_synced_gen = gen
        node.touched_at = node.validated_at = trio.current_time()
        self.ctx.journal.put_attrs(key, etag, v.size, None, meta)
        if node.version is v:
            v.dirty = False
            v.source = Source(key, etag, v.dk, v.size, dict(v.envelope))
        else:
            self._retire(v)
        if node.dirty:
            self.record_dirty(node)
        else:
            self.forget_record(node)
        log.debug("committed %r (%d bytes)", key, v.size)

    async def _upload(self, node: Inode, v: ContentVersion, key: str, meta: dict[str, str]) -> str:
        resume = None
        if v.size > self.uploader.single_put_max:
            rec = self.ctx.journal.get_dirty(node.fid)
            if rec is not None and rec.upload_id and rec.vid == v.vid and rec.key == key:
                resume = (rec.upload_id, rec.parts)  # an earlier attempt failed half-way
        return await self.uploader.upload(
            key, v, meta, content_type=FILE_CONTENT_TYPE, fid=node.fid, resume=resume
        )

    async def _commit_attrs(self, node: Inode) -> None:
        gen = node.meta_gen
        key = self.ctx.key_of(node)
        if node.remote is None:
            return
        if node.remote.metadata is None:
            await self.ns.ensure_attrs(node)
        assert node.remote.metadata is not None
        meta = {**node.remote.metadata, **attrs_to_meta(node.attrs)}
        self.ctx.journal.forget_attrs_now(key)
        etag = await self.ctx.store.copy(
            key,
            key,
            metadata=meta,
            content_type=FILE_CONTENT_TYPE,
            headers=node.remote.headers,
            if_match=node.remote.etag,
            size=node.remote.size,
        )
        node.remote = Remote(etag, node.remote.size, time.time(), meta, node.remote.headers)
        node.meta_synced_gen = gen
        node.touched_at = trio.current_time()
        self.ctx.journal.put_attrs(key, etag, node.remote.size, None, meta)
        if not node.dirty:
            self.forget_record(node)

    def _maybe_evict(self) -> None:
        self.ctx.cache.maybe_evict()


def _open_at(v: ContentVersion, upto: int | None, at: int | None) -> bool:
    """Whether a write at ``at`` / a truncate to ``upto`` leaves sealed bytes alone."""
    if at is not None and at < v.sealed_upto:
        return False
    return upto is None or upto >= v.sealed_upto


def _large(signature: tuple[object, ...]) -> bool:
    """Whether a journaled version may have had a multipart upload (``record_dirty``)."""
    size = signature[2]
    return isinstance(size, int) and size > MULTIPART_MIN


#: Below this, uploads are single PUTs (the default single_put_max is larger).
MULTIPART_MIN = 1024 * 1024
