"""File content: open, read, write, truncate, close and fsync.

Reading a clean file goes through a clean copy of its object in the cache
(the object's own ciphertext, fetched on demand).  Writing goes to the
file's *head*: a dirty layer, a log of AES-GCM records under a cache-only
key (cosencfs/cache/dirtylog.py), on top of what the file held before.  A
head is sealed (immutable) when its upload begins; a write that finds it
sealed starts a new head on top of it instead, so sealing never races a
write (docs/concurrency.md).  The commit itself is in cosencfs/fs/commit.py.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass

import trio

from cosencfs.cache import assemble
from cosencfs.cache.content import THREAD_THRESHOLD, ObjectContent, Source
from cosencfs.cache.dirtylog import DirtyLayer, LayerState
from cosencfs.cache.journal import DirtyRecord, LayerRecord, SourceRecord
from cosencfs.crypto.ctr import DataKey
from cosencfs.crypto.envelope import ObjectFormat, classify
from cosencfs.errors import DamagedObjectError, FsError, NotFoundError, TransientError
from cosencfs.fs.attrs import FILE_CONTENT_TYPE, META_SIZE, Attrs, Kind, attrs_to_meta
from cosencfs.fs.commit import Committer
from cosencfs.fs.context import FsContext
from cosencfs.fs.inode import Inode
from cosencfs.fs.namespace import Namespace
from cosencfs.fs.policy import check_servable
from cosencfs.fs.stream import StreamUpload
from cosencfs.fs.writeback import WriteBack
from cosencfs.store.base import MAX_FILE_SIZE

log = logging.getLogger(__name__)

#: Writes this large are encrypted and written in a worker thread.
THREAD_WRITE = THREAD_THRESHOLD
#: A head this many layers deep is uploaded soon (each fork adds one).
MAX_DEPTH = 4


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
        self.committer = Committer(ctx, ns, self)
        self.uploader = self.committer.uploader
        opts = ctx.options
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

    async def commit(self, node: Inode) -> None:
        await self.committer.commit(node)

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
        self.set_head(node, self.ctx.cache.layers.new(size=0, limit=0))
        self.ns.attach(d, name, node)
        self.ns.touch_dir(d)
        node.nlookup += 1
        h = self._new_handle(node, flags)
        h.wrote = True  # creating is a change: close() journals it even without a write
        # Open for writing: uploaded when closed (or once dirty too long), not
        # under a writer that is just starting.
        self.writeback.schedule(node, self.ctx.options.max_dirty_age)
        return h, node

    # -- reading -----------------------------------------------------------------

    async def clean_copy(self, node: Inode) -> ObjectContent | None:
        """The clean copy reads of an unchanged file come from (made on first use)."""
        v = node.clean
        if v is not None and not v.discarded:
            return v
        r = node.remote
        if r is None or r.size == 0:
            return None
        if r.metadata is None:
            await self.ns.ensure_attrs(node)
            # Another task may have made the copy while we waited.
            return await self.clean_copy(node) if node.remote is not None else None
        source = self.remote_source(node)
        if source is None:
            return None
        v = self.ctx.cache.clean_for(source)
        v.owner = node
        node.clean = v
        return v

    def remote_source(self, node: Inode) -> Source | None:
        """The object ``node`` holds in COS, with its data key (None: empty)."""
        r = node.remote
        if r is None or r.size == 0 or r.metadata is None:
            return None
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
            log.info("%r has no encryption envelope; reading it as plaintext", key)
            return Source(key, r.etag, None, r.size, {})
        dk = self.ctx.codec.open(r.metadata, key=key)
        return Source(key, r.etag, dk, r.size, dict(r.metadata))

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self.handle(fh)
        node = h.node
        self.reads += 1
        head = node.head
        if head is not None:
            bottom = head.bottom
            if bottom.source is not None:
                # Bytes not rewritten come from the object: read ahead there.
                self._readahead(h, self.ctx.cache.clean_for(bottom.source), offset, size)
            data = await assemble.read_plain(self.ctx.cache, head, offset, offset + size)
            self.read_bytes += len(data)
            return data
        v = await self.clean_copy(node)
        if v is None or offset >= v.size:
            return b""
        v.pins += 1
        try:
            self._readahead(h, v, offset, size)
            data = await self.ctx.cache.fetcher.read(v, offset, size)
            self.read_bytes += len(data)
            return data
        finally:
            v.pins -= 1
            self.ctx.cache.maybe_evict()

    def _readahead(self, h: Handle, v: ObjectContent, offset: int, size: int) -> None:
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
            self.ctx.cache.fetcher.prefetch(self.ctx.nursery, v, start, stop)
            h.ahead_until = stop

    # -- writing -----------------------------------------------------------------

    @staticmethod
    def set_head(node: Inode, layer: DirtyLayer) -> None:
        node.head = layer
        layer.owner = node

    async def writable_head(self, node: Inode, at: int | None) -> DirtyLayer:
        """The layer a write at ``at`` (None: an append) or a truncate to ``at`` may
        change; a new one on top when the head is sealed or ``at`` is below the
        part of it a streamed upload sealed."""
        while True:
            head = node.head
            if head is not None and head.accepts(0 if at is None else at):
                return head
            await self._new_head(node, head)

    async def _new_head(self, node: Inode, head: DirtyLayer | None) -> None:
        cache = self.ctx.cache
        if head is None:
            if node.remote is not None and node.remote.metadata is None:
                await self.ns.ensure_attrs(node)
            if node.head is not None:
                return  # another writer made one while we waited
            source = self.remote_source(node)
            size = node.file_size
            self.set_head(node, cache.layers.new(size=size, limit=size, source=source))
            return
        async with head.lock:
            if node.head is not head:
                return  # another writer moved on already
            # Freeze it (check and change with no await between): it stays
            # readable below the new head until its content is in COS.
            head.state = LayerState.SEALED
            if not head.uploading:
                head.burn()  # never uploaded itself: its key is done with
                if head.stream is not None:
                    head.stream.abandon()
                    head.stream = None
            new = cache.layers.new(size=head.size, limit=head.size, below=head)
            self.set_head(node, new)
        if new.depth > MAX_DEPTH:
            # Each abandoned streamed upload adds a layer: collapse them soon.
            self.writeback.schedule(node, 0.0)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        h = self.handle(fh)
        if not h.writable:
            raise FsError(errno.EBADF)
        node = h.node
        while True:
            head = await self.writable_head(node, None if h.append else offset)
            async with head.lock:
                if h.append:
                    offset = head.size
                if node.head is not head or not head.accepts(offset):
                    continue  # sealed meanwhile (a commit, a streamed part): new head
                if offset + len(data) > MAX_FILE_SIZE:
                    raise FsError(errno.EFBIG)
                await self._write_locked(head, offset, data)
                self._stream(node, head)
                break
        h.wrote = True
        self.writes += 1
        self.write_bytes += len(data)
        self._modified(node)
        return len(data)

    async def _write_locked(self, head: DirtyLayer, offset: int, data: bytes) -> None:
        """Write into ``head``; the caller holds ``head.lock`` (so may a worker thread)."""
        cache = self.ctx.cache
        threaded = len(data) >= THREAD_WRITE
        if head.appends_direct(offset):
            direct = head.direct
            if direct is None:
                dk = DataKey.generate()
                direct = head.direct = head.staged = cache.staged(dk, 0)
                head.object_dk, head.envelope = dk, self.ctx.codec.seal(dk)
                head.direct_envelope = dict(head.envelope)
            direct.size = offset + len(data)
            if threaded:
                # Worker thread; this task holds head.lock all the while.
                await trio.to_thread.run_sync(
                    direct.produce, offset, data, limiter=cache.io_limiter
                )
            else:
                direct.produce(offset, data)
            head.direct_end = head.size = offset + len(data)
            return
        # Anything but an append front to back: the direct key is burned,
        # and the bytes go to the log under a fresh nonce.
        head.burn()
        if threaded:
            # Worker thread; this task holds head.lock all the while.
            refs, n = await trio.to_thread.run_sync(
                head.append_write, offset, data, limiter=cache.io_limiter
            )
        else:
            refs, n = head.append_write(offset, data)
        head.apply_write(refs, n)

    def _stream(self, node: Inode, head: DirtyLayer) -> None:
        """Send finished parts of a large file still being written (see stream.py).

        Called with ``head.lock`` held: sealing parts is exclusive with writes.
        """
        if isinstance(head.stream, StreamUpload):
            head.stream.pump()
            return
        nursery = self.ctx.nursery
        if (
            nursery is None
            or not self.ctx.options.stream_uploads
            or head.size <= self.uploader.single_put_max
            or not head.streamable
        ):
            return
        head.stream = StreamUpload(
            self.ctx,
            self.uploader.part_limiter,
            nursery,
            key=self.ctx.key_of(node),
            layer=head,
            attrs=attrs_to_meta(node.attrs),
            content_type=FILE_CONTENT_TYPE,
            fid=node.fid,
            on_seal=lambda: self.record_dirty(node),
        )
        head.stream.pump()

    def _modified(self, node: Inode) -> None:
        now = self.ctx.now_ns()
        node.attrs.mtime_ns = node.attrs.ctime_ns = now
        head = node.head
        if head is not None and head.log_size > 2 * head.size + self.ctx.options.single_put_max:
            # Rewritten over and over (a database): upload it, which starts an
            # empty log, rather than let the log grow without bound.
            self.writeback.schedule(node, 0.0)
            return
        self.writeback.schedule(node, self.ctx.options.max_dirty_age if node.open_count else None)

    async def truncate(self, node: Inode, size: int) -> None:
        if size > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        old = None
        if size == 0:
            # The whole content is new: older layers go (after the journal says so).
            old = node.head
            if old is not None:
                async with old.lock:
                    old.state = LayerState.SEALED
            self.set_head(node, self.ctx.cache.layers.new(size=0, limit=0))
        else:
            while True:
                head = await self.writable_head(node, size)
                async with head.lock:
                    if node.head is not head or not head.accepts(size):
                        continue
                    if size < head.direct_end:
                        head.burn()  # those direct bytes are gone; never rewritten in place
                    blob = head.encode_truncate(size)
                    head.append(blob)
                    head.apply_truncate(size, len(blob))
                    break
        node.size = size
        self._modified(node)
        # truncate(2) returns with the change as durable as a close() would make it.
        self.record_dirty(node)
        if old is not None and not old.uploading:
            self.ctx.cache.layers.retire_chain(old)

    async def materialize(self, node: Inode) -> None:
        """Copy every byte the file still needs from its object into a new head.

        Before that object goes away (a rename deletes the old key), so the
        dirty content no longer depends on it.  The caller holds the upload lock.
        """
        head = node.head
        if head is None or head.bottom.source is None:
            return
        cache = self.ctx.cache
        new = cache.layers.new(size=0, limit=0)
        async with head.lock:
            head.state = LayerState.SEALED
            head.burn()
        chunk = 4 * 1024 * 1024
        async with new.lock:  # nobody else sees it yet; the write path wants it held
            for pos in range(0, head.size, chunk):
                plain = await assemble.read_plain(cache, head, pos, pos + chunk)
                await self._write_locked(new, pos, plain)
        self.set_head(node, new)
        self.record_dirty(node)
        self.ctx.cache.layers.retire_chain(head)

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
        if node.unlinked:
            self.ns.drop_content(node)
        self.ns.maybe_drop(node)
        self.ctx.cache.maybe_evict()

    async def fsync(self, fh: int) -> None:
        h = self.handle(fh)
        if h.node.dirty and not h.node.unlinked:
            await self.writeback.flush(h.node)

    def record_dirty(self, node: Inode) -> None:
        """Journal what ``node`` holds that COS does not (close, truncate, seal)."""
        head = node.head
        if head is None:
            return
        chain = head.chain()
        key = self.ctx.key_of(node)
        signature = Journaled(
            key,
            tuple((x.vid, x.log_size, x.size, x.limit, x.direct_end, x.burned) for x in chain),
            node.meta_gen,
            head.object_dk is not None,
            head.state is LayerState.SEALED,
        )
        if node.journaled == signature:
            return
        prev = node.journaled
        if isinstance(prev, Journaled) and self.ctx.nursery is not None:
            prev_vid, _, prev_size = prev.layers[0][:3]
            # Only a multipart upload records an upload id: look only then.
            if prev_vid != head.vid and prev_size > MULTIPART_MIN:
                old = self.ctx.journal.get_dirty(node.fid)
                if old is not None and old.upload_id and old.vid != head.vid:
                    # A multipart upload of a layer that will never be completed.
                    self.ctx.spawn(self.uploader.abort, old.key, old.upload_id)
        codec = self.ctx.codec
        layers = []
        for x in chain:
            if x.wrapped_key is None:
                x.wrapped_key = codec.wrap_cache_key(x.cache_key, x.vid)
            rec = LayerRecord(
                x.vid,
                x.log_size,
                x.wrapped_key,
                x.size,
                x.limit,
                sealed=x.state is not LayerState.OPEN,
            )
            if x.direct is not None:
                rec.direct_vid, rec.direct_end, rec.burned = x.direct.vid, x.direct_end, x.burned
                rec.direct_envelope = dict(x.direct_envelope)
            layers.append(rec)
        src = None
        bottom = chain[-1].source
        if bottom is not None:
            src = SourceRecord(bottom.key, bottom.etag, dict(bottom.envelope), bottom.limit)
        self.ctx.journal.put_dirty(
            DirtyRecord(
                fid=node.fid,
                key=key,
                vid=head.vid,
                size=head.size,
                attrs=attrs_to_meta(node.attrs),
                content_type=FILE_CONTENT_TYPE,
                source=src,
                layers=layers,
                object_envelope=dict(head.envelope) if head.object_dk is not None else None,
            )
        )
        node.journaled = signature

    def forget_record(self, node: Inode) -> None:
        self.ctx.journal.delete_dirty(node.fid)
        node.journaled = None


@dataclass(slots=True, frozen=True)
class Journaled:
    """What a file's journal record says, to skip writing the same record twice."""

    key: str
    #: (vid, log bytes, size, limit, direct bytes, burned) of each layer, newest first.
    layers: tuple[tuple[str, int, int, int, int, bool], ...]
    meta_gen: int
    keyed: bool
    sealed: bool


#: Below this, uploads are single PUTs (the default single_put_max is larger).
MULTIPART_MIN = 1024 * 1024
