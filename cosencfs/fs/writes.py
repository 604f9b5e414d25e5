"""The write path: a file's head, writes, truncates, and taking a file off its object.

Writing goes to the file's *head*: a dirty layer, a log of AES-GCM records
under a cache-only key (cosencfs/cache/dirtylog.py), on top of what the file
held before; bytes written front to back go straight into the new object's
upload copy instead (the layer's *direct* copy).  A head is sealed
(immutable) when its upload begins; a write that finds it sealed starts a
new head on top of it instead, so sealing never races a write
(docs/concurrency.md).  A large file written front to back is uploaded part
by part while it is written (cosencfs/fs/stream.py).
"""

from __future__ import annotations

import errno

import trio

from cosencfs.cache import assemble
from cosencfs.cache.content import THREAD_THRESHOLD
from cosencfs.cache.dirtylog import DirtyLayer, LayerState
from cosencfs.crypto.ctr import DataKey
from cosencfs.errors import FsError
from cosencfs.fs.attrload import AttrLoader
from cosencfs.fs.attrs import FILE_CONTENT_TYPE, attrs_to_meta
from cosencfs.fs.context import FsContext
from cosencfs.fs.dirtyrecord import DirtyRecords
from cosencfs.fs.handles import Handle
from cosencfs.fs.inode import Inode
from cosencfs.fs.reads import remote_source
from cosencfs.fs.stream import StreamUpload, direct_job, wait_hold
from cosencfs.fs.upload import Uploader
from cosencfs.fs.writeback import WriteBack
from cosencfs.store.base import MAX_FILE_SIZE
from cosencfs.util import acquire

#: A head this many layers deep is uploaded soon (each fork adds one).
MAX_DEPTH = 4
#: Rewrites are copied off the old object in pieces this big (memory bound).
_MATERIALIZE_CHUNK = 4 * 1024 * 1024


def set_head(node: Inode, layer: DirtyLayer) -> None:
    node.as_file.head = layer
    layer.owner = node


class Writer:
    def __init__(
        self,
        ctx: FsContext,
        attrs: AttrLoader,
        records: DirtyRecords,
        writeback: WriteBack,
        uploader: Uploader,
    ) -> None:
        self.ctx = ctx
        self.attrs = attrs
        self.records = records
        self.writeback = writeback
        self.uploader = uploader
        #: Requests served (average sizes tell how well the kernel batches).
        self.writes = self.write_bytes = 0

    async def writable_head(self, node: Inode, at: int | None) -> DirtyLayer:
        """The layer a write at ``at`` (None: an append) or a truncate to ``at`` may
        change; a new one on top when the head is sealed or ``at`` is below the
        part of it a streamed upload sealed."""
        while True:
            head = node.as_file.head
            if head is not None and head.accepts(0 if at is None else at):
                return head
            await self._new_head(node, head)

    async def _new_head(self, node: Inode, head: DirtyLayer | None) -> None:
        f = node.as_file
        layers = self.ctx.cache.layers
        if head is None:
            if node.remote is not None and node.remote.metadata is None:
                await self.attrs.ensure(node)
            remote = node.remote
            # An empty file needs no bytes of the object (nor its tags checked).
            source = await remote_source(self.ctx, node) if f.current_size else None
            if f.head is not None or node.remote is not remote:
                return  # another writer made one, or the object changed, while we waited
            size = f.current_size
            set_head(node, layers.new(size=size, limit=size, source=source))
            return
        async with head.lock:
            if f.head is not head:
                return  # another writer moved on already
            # Freeze it (check and change with no await between): it stays
            # readable below the new head until its content is in COS.
            head.state = LayerState.SEALED
            if not head.uploading:
                head.burn()  # never uploaded itself: its key is done with
                if head.stream is not None:
                    head.stream.abandon()
                    head.stream = None
            new = layers.new(size=head.size, limit=head.size, below=head)
            set_head(node, new)
        if new.depth > MAX_DEPTH:
            # Each abandoned streamed upload adds a layer: collapse them soon.
            self.writeback.schedule(node, 0.0)

    async def write(self, h: Handle, offset: int, data: bytes) -> int:
        if not h.writable:
            raise FsError(errno.EBADF)
        node = h.node
        f = node.as_file
        while True:
            head = f.head
            if head is None or not head.accepts(0 if h.append else offset):
                head = await self.writable_head(node, None if h.append else offset)
            lock = head.lock
            await acquire(lock)
            try:
                if h.append:
                    offset = head.size
                if f.head is not head or not head.accepts(offset):
                    continue  # sealed meanwhile (a commit, a streamed part): new head
                if offset + len(data) > MAX_FILE_SIZE:
                    raise FsError(errno.EFBIG)
                if (
                    offset + len(data) > self.uploader.single_put_max
                    and head.stream is None
                    and head.appends_direct(offset)
                ):
                    # Before the write that takes the file past one PUT: its
                    # part goes from the buffer it fills too (fs/stream.py).
                    self._stream(node, head, offset + len(data))
                await self._write_locked(head, offset, data)
                self._stream(node, head)
                break
            finally:
                lock.release()
        h.wrote = True
        self.writes += 1
        self.write_bytes += len(data)
        self._modified(node)
        return len(data)

    async def _write_locked(self, head: DirtyLayer, offset: int, data: bytes) -> None:
        """Write into ``head``; the caller holds ``head.lock`` (so may a worker thread)."""
        if not data:
            return  # nothing to store (a direct copy holds each range once, never an empty one)
        cache = self.ctx.cache
        threaded = len(data) >= THREAD_THRESHOLD
        if head.appends_direct(offset):
            direct = head.direct
            if direct is None:
                dk = DataKey.generate()
                head.object_dk, head.envelope = dk, self.ctx.codec.seal(dk)
                direct = head.direct = cache.upload_copy(head, 0)
                head.direct_envelope = dict(head.envelope)
            # A streamed upload keeps the ciphertext for its part's PUT.
            await wait_hold(head, direct, offset, len(data))
            direct.size = offset + len(data)
            job = direct_job(head, direct, offset, data)
            if threaded:
                # Worker thread; this task holds head.lock all the while.
                await trio.to_thread.run_sync(job, limiter=cache.io_limiter)
            else:
                job()
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

    def _stream(self, node: Inode, head: DirtyLayer, size: int | None = None) -> None:
        """Send finished parts of a large file still being written (see stream.py).

        Called with ``head.lock`` held: sealing parts is exclusive with writes.
        ``size``: the file's size once the write about to be made is done.
        """
        if isinstance(head.stream, StreamUpload):
            head.stream.pump()
            return
        nursery = self.ctx.nursery
        if (
            nursery is None
            or not self.ctx.options.stream_uploads
            or max(head.size, size or 0) <= self.uploader.single_put_max
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
            fid=node.as_file.fid,
            on_seal=lambda: self.records.record(node),
        )
        head.stream.pump()

    def _modified(self, node: Inode) -> None:
        now = self.ctx.now_ns()
        node.attrs.mtime_ns = node.attrs.ctime_ns = now
        f = node.as_file
        head = f.head
        if head is not None and head.log_size > 2 * head.size + self.ctx.options.single_put_max:
            # Rewritten over and over (a database): upload it, which starts an
            # empty log, rather than let the log grow without bound.
            self.writeback.schedule(node, 0.0)
            return
        self.writeback.schedule(node, self.ctx.options.max_dirty_age if f.open_count else None)

    async def truncate(self, node: Inode, size: int) -> None:
        if size > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        f = node.as_file
        layers = self.ctx.cache.layers
        old = None
        if size == 0:
            # The whole content is new: older layers go (after the journal says so).
            old = f.head
            if old is not None:
                async with old.lock:
                    old.state = LayerState.SEALED
            set_head(node, layers.new(size=0, limit=0))
        else:
            while True:
                head = await self.writable_head(node, size)
                async with head.lock:
                    if f.head is not head or not head.accepts(size):
                        continue
                    if size < head.direct_end:
                        head.burn()  # those direct bytes are gone; never rewritten in place
                    blob = head.encode_truncate(size)
                    head.append(blob)
                    head.apply_truncate(size, len(blob))
                    break
        f.size = size
        self._modified(node)
        # truncate(2) returns with the change as durable as a close() would make it.
        self.records.record(node)
        if old is not None and not old.uploading:
            layers.retire_chain(old)

    async def materialize(self, node: Inode) -> None:
        """Copy every byte the file still needs from its object into a new head.

        Before that object goes away (a rename deletes the old key), so the
        dirty content no longer depends on it.  The caller holds the upload lock.
        """
        head = node.as_file.head
        if head is None or head.bottom.source is None:
            return
        cache = self.ctx.cache
        new = cache.layers.new(size=0, limit=0)
        async with head.lock:
            head.state = LayerState.SEALED
            head.burn()
        async with new.lock:  # nobody else sees it yet; the write path wants it held
            for pos in range(0, head.size, _MATERIALIZE_CHUNK):
                plain = await assemble.read_plain(cache, head, pos, pos + _MATERIALIZE_CHUNK)
                await self._write_locked(new, pos, plain)
        set_head(node, new)
        self.records.record(node)
        cache.layers.retire_chain(head)
