"""Uploading a large file while it is still being written.

A sequential writer (``cp``, ``dd``, a download) produces a file front to
back.  Once it has written more than a single PUT would carry, cosencfs
starts a multipart upload and sends every 8 MiB part as soon as a byte
beyond it exists, so at ``close``/``fsync`` only the last parts remain.

The object's data key is drawn when the stream starts.  Each part is
*sealed* before it is produced: ``sealed_upto`` moves past it while the
writer holds the layer's lock, so no write can change those bytes any more
(a write below the mark starts a new layer instead, and the stream is
abandoned, its upload aborted).  A part is produced once, from frozen bytes,
under the object key into the layer's upload copy.  Once the stream exists,
each part's writes also leave its ciphertext in a part buffer
(:func:`direct_job`, cosencfs/fs/partjob.py), from which the part is tagged
and sent: one pass over each byte, no read back.

The object's metadata is fixed when a multipart upload starts, before the
final size and mtime are known; when the upload completes, a server-side copy
onto itself puts the final metadata (one request, no data moved).  Each
part's chunk tags are computed once it is produced (parts start on multiples
of 8 MiB, so on chunk boundaries); the final metadata carries the object's
integrity tags, and their companion is stored before that copy.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import trio

from cosencfs.cache import assemble
from cosencfs.cache.content import ObjectContent
from cosencfs.cache.dirtylog import DirtyLayer
from cosencfs.crypto.ctr import DataKey
from cosencfs.crypto.integrity import ChunkKey
from cosencfs.errors import CosEncFsError, StoreError
from cosencfs.fs import partjob
from cosencfs.fs.context import FsContext
from cosencfs.fs.inode import Inode
from cosencfs.fs.upload import MIN_PART, parts_of, put_final_metadata
from cosencfs.store.base import FileRange
from cosencfs.util import open_nursery

log = logging.getLogger(__name__)

#: How long a write that starts a part waits for one of its stream's part
#: buffers to come back from a PUT when the mount's budget is spent.  A part
#: that finds no buffer goes through the page cache and is read back for its
#: PUT: two more copies of each byte, most of a sequential write's CPU on a
#: machine where the upload cannot keep up with the writer
#: (docs/performance.md, branch seqw2).  A wait that times out means the
#: network is slower than the writer: that stream waits no more.
HOLD_WAIT = 0.5


@dataclass(slots=True)
class _Held:
    """A part whose writes keep their ciphertext in ``buf``: its first ``filled`` bytes."""

    buf: memoryview
    filled: int = 0


async def wait_hold(layer: DirtyLayer, copy: ObjectContent, offset: int, n: int) -> None:
    """Wait, if the layer's streamed upload asks it, before :func:`direct_job` (lock held)."""
    stream = layer.stream
    if isinstance(stream, StreamUpload) and stream.staged is copy:
        await stream.wait_hold(offset, n)


def direct_job(
    layer: DirtyLayer, copy: ObjectContent, offset: int, data: bytes | memoryview
) -> Callable[[], None]:
    """The job that writes an append into the layer's direct copy (run where the caller likes).

    Made in the event loop, with the layer's lock held: a streamed upload
    hands out its part buffers here, and the job fills them.
    """
    stream = layer.stream
    if not isinstance(stream, StreamUpload) or stream.staged is not copy:
        return functools.partial(copy.produce, offset, data)
    pieces = stream.holds(offset, len(data))

    def job() -> None:
        # Worker thread or event loop; the caller holds layer.lock, and each
        # hold is this write's own range of a part not yet sealed.
        view = memoryview(data)
        for at, n, hold in pieces:
            copy.produce(at, view[at - offset : at - offset + n], hold=hold)

    return job


class StreamUpload:
    """The multipart upload of one layer, fed part by part while it is written."""

    def __init__(
        self,
        ctx: FsContext,
        limiter: trio.CapacityLimiter,
        nursery: trio.Nursery,
        *,
        key: str,
        layer: DirtyLayer,
        attrs: Mapping[str, str],
        content_type: str,
        fid: str,
        on_seal: Callable[[], None],
    ) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.journal = ctx.journal
        self.limiter = limiter
        self.key = key
        self.layer = layer
        if layer.object_dk is None:
            layer.object_dk = DataKey.generate()
            layer.envelope = ctx.codec.seal(layer.object_dk)
        self.staged = ctx.cache.upload_copy(layer, layer.size)
        self.metadata = {**layer.envelope, **attrs}
        self.content_type = content_type
        self.fid = fid
        self._on_seal = on_seal
        self.upload_id: str | None = None
        self.etags: dict[int, str] = {}
        #: Chunk tags of each part produced, by part number.
        self.part_tags: dict[int, list[bytes]] = {}
        self.abandoned = False
        self._started = trio.Event()
        self._sent_parts = 0  # parts handed to uploads, in order
        self._running: dict[int, trio.Event] = {}
        self._nursery = nursery
        self._buffers = partjob.StreamBuffers(ctx.part_buffers, MIN_PART)
        #: Parts whose writes keep their ciphertext in a buffer, by part number.
        self._holds: dict[int, _Held] = {}
        self._ck: tuple[DataKey, ChunkKey | None] | None = None
        #: A write waited HOLD_WAIT for a part buffer in vain: the upload is
        #: slower than the writer, whose writes wait no more.
        self._slow = False
        nursery.start_soon(self._start)

    async def _start(self) -> None:
        try:
            self.upload_id = await self.store.create_multipart(
                self.key, self.metadata, content_type=self.content_type
            )
            self.journal.set_upload(self.fid, self.upload_id, {})
        except (CosEncFsError, OSError) as exc:
            log.debug("streamed upload of %r not started: %s", self.key, exc)
        finally:
            self._started.set()
        if self.abandoned:
            await self._abort()
        else:
            self.pump()

    def ready_upto(self) -> int:
        """Bytes that can be sealed now: whole parts with data beyond them."""
        n = max(0, (self.layer.size - 1) // MIN_PART)  # the part holding the last byte waits
        return n * MIN_PART

    def pump(self) -> None:
        """Seal and send the parts the writer has finished.

        Runs in the event loop with no await; callers that write hold the
        layer's lock, so sealing a part cannot race a write into it.
        """
        if self.abandoned:
            return
        layer = self.layer
        owner = layer.owner
        if isinstance(owner, Inode) and owner.unlinked:
            # Unlinked (or replaced by a rename) while still written: its
            # content never goes up (the unlink deleted its record, its object
            # goes at the last close), and a record journaled for a part now
            # would have recovery upload the deleted file after a crash.
            self.abandon()
            return
        upto = self.ready_upto()
        if upto > layer.sealed_upto:
            layer.sealed_upto = upto
            # The journal now covers every sealed byte: after a crash the
            # same parts are produced again from the same plaintext.
            self._on_seal()
        if self.upload_id is None:
            return  # sent once the upload exists
        while (self._sent_parts + 1) * MIN_PART <= layer.sealed_upto:
            self._sent_parts += 1
            n = self._sent_parts
            self._running[n] = trio.Event()
            self._nursery.start_soon(self._send, n)

    async def _part(self, upload_id: str, n: int, start: int, end: int) -> None:
        await assemble.produce(self.ctx.cache, self.layer, self.staged, start, end)
        dk = self.layer.object_dk
        if dk is None:
            raise CosEncFsError(f"streamed upload of {self.key!r} without a data key")
        async with self.limiter:
            held = self._holds.pop(n, None)
            if held is not None and held.filled != end - start:
                self._buffers.give(held.buf)  # not every byte of it went through the buffer
                held = None
            buf = self._buffers.take() if held is None else held.buf
            counts = self.ctx.part_buffers
            if buf is None:
                etag = await self._part_from_file(upload_id, n, start, end, dk)
                counts.sent_file += 1
            else:
                try:
                    ck = self._chunk_key(dk)
                    if held is None:
                        # One job: the part read once from the copy and tagged
                        # while in the CPU's cache (cosencfs/fs/partjob.py).
                        tags = await trio.to_thread.run_sync(
                            partjob.load_part,
                            self.staged.path,
                            ck,
                            start,
                            end,
                            buf,
                            limiter=self.ctx.cache.io_limiter,
                        )
                    elif ck is not None:
                        # Its writes left the ciphertext here: only the MAC is left.
                        tags = await trio.to_thread.run_sync(
                            partjob.tag_part, ck, start, buf, end - start
                        )
                    else:
                        tags = []
                    self.part_tags[n] = tags
                    body = memoryview(buf)[: end - start]
                    try:
                        etag = await self.store.upload_part(self.key, upload_id, n, body)
                    finally:
                        body.release()
                    if held is None:
                        counts.sent_loaded += 1
                    else:
                        counts.sent_held += 1
                finally:
                    self._buffers.give(buf)
        if self.abandoned or self.upload_id != upload_id:
            # Abandoned while this part was on the wire: abandon() took the
            # upload out of the journal, and it stays out (a record naming it
            # would have the next commit abort it a second time, and recovery
            # resume an upload that is gone).  Checked and acted on with no
            # await between.
            return
        self.etags[n] = etag
        self.journal.set_upload(self.fid, upload_id, self.etags)

    async def _part_from_file(
        self, upload_id: str, n: int, start: int, end: int, dk: DataKey
    ) -> str:
        """No part buffer free: tags from the copy beside the PUT, which reads the copy too."""

        async def tag() -> None:
            # Beside the part's upload, not before it: the tags are needed
            # only at finish(), and the upload waits on the network anyway.
            if n not in self.part_tags:
                self.part_tags[n] = await self.ctx.tags.tag_copy(
                    self.staged.path, dk, start, end, self.ctx.cache.io_limiter
                )

        async with open_nursery() as nursery:
            nursery.start_soon(tag)
            etag = await self.store.upload_part(
                self.key, upload_id, n, FileRange(self.staged.path, start, end - start)
            )
        return etag

    def holds(self, offset: int, n: int) -> list[tuple[int, int, memoryview | None]]:
        """Where a write of ``n`` bytes at ``offset`` keeps its ciphertext, part by part.

        ``(offset, length, hold)`` pieces: ``hold`` is the part buffer's range
        for those bytes, or None (through the page cache; the part is then
        read back from the copy when it is sent).  A part is held only if
        every byte of it goes through its buffer, from its first one on.
        Called by the writer in the event loop with the layer's lock held,
        before the write's job runs: no part is sealed (sent) while its
        buffer is being filled.
        """
        out: list[tuple[int, int, memoryview | None]] = []
        pos, end = offset, offset + n
        while pos < end:
            part = pos // MIN_PART + 1
            first = (part - 1) * MIN_PART
            stop = min(end, first + MIN_PART)
            out.append((pos, stop - pos, self._hold(part, pos - first, stop - pos)))
            pos = stop
        return out

    async def wait_hold(self, offset: int, n: int) -> None:
        """Before a write of ``n`` bytes at ``offset`` takes its part buffers (:meth:`holds`):
        if it starts a part and no buffer is free, wait for one of this
        stream's PUTs to give its buffer back.

        The writer holds the layer's lock: no part is sealed meanwhile, and
        only sealed parts' buffers are waited for (they come back without it).
        """
        start = -(-offset // MIN_PART) * MIN_PART  # the first part boundary at or after offset
        if start >= offset + n or start // MIN_PART + 1 in self._holds:
            return
        if self._started.is_set() and self.upload_id is None:
            return  # no upload (its Initiate failed): no PUT gives a buffer back
        counts = self.ctx.part_buffers
        while not (self.abandoned or self._slow or self._buffers.available()):
            unsealed = sum(1 for p in self._holds if p * MIN_PART > self.layer.sealed_upto)
            if self._buffers.out <= unsealed:
                return  # none of ours is in a PUT: none will come back soon
            t0 = trio.current_time()
            with trio.move_on_after(HOLD_WAIT) as scope:
                await self._buffers.wait_given()
            counts.waits += 1
            counts.wait_s += trio.current_time() - t0
            if scope.cancelled_caught:
                counts.wait_timeouts += 1
                self._slow = True
                log.debug("streamed upload of %r slower than its writer", self.key)

    def _hold(self, part: int, at: int, n: int) -> memoryview | None:
        held = self._holds.get(part)
        if self.abandoned or (held is None and at != 0):
            return None
        if held is not None and held.filled != at:
            del self._holds[part]  # not an append to what it holds: from the copy
            self._buffers.give(held.buf)
            return None
        if held is None:
            buf = self._buffers.take()
            if buf is None:
                return None
            held = self._holds[part] = _Held(buf)
        held.filled = at + n
        return memoryview(held.buf)[at : at + n]

    def _drop_holds(self) -> None:
        for held in self._holds.values():
            self._buffers.give(held.buf)
        self._holds.clear()

    def _chunk_key(self, dk: DataKey) -> ChunkKey | None:
        """The object's chunk-tag key, derived once per stream (None: not tagging)."""
        if self._ck is None or self._ck[0] is not dk:
            self._ck = (dk, self.ctx.tags.chunk_key(dk))
        return self._ck[1]

    async def _send(self, n: int) -> None:
        start = (n - 1) * MIN_PART
        try:
            if self.abandoned or self.upload_id is None:
                return
            await self._part(self.upload_id, n, start, start + MIN_PART)
        except (CosEncFsError, OSError) as exc:
            # finish() sends it again; a failed part is not fatal yet.
            log.debug("part %d of %r failed: %s", n, self.key, exc)
        finally:
            self._running.pop(n).set()

    async def finish(
        self, size: int, metadata: Mapping[str, str]
    ) -> tuple[str, dict[str, str], list[bytes]] | None:
        """Send what is left and complete: the object's ETag, final metadata (tags
        included) and chunk tags; None when the stream cannot be used (never
        started, abandoned, or the file outgrew the fixed part size)."""
        await self._started.wait()
        for ev in list(self._running.values()):
            await ev.wait()
        layout = parts_of(size)
        if self.upload_id is None or self.abandoned or layout[0][2] != min(size, MIN_PART):
            await self.abandon_now()
            return None
        upload_id = self.upload_id
        missing = [(n, s, e) for n, s, e in layout if n not in self.etags]
        try:
            async with trio.open_nursery() as nursery:
                for n, s, e in missing:
                    nursery.start_soon(self._part, upload_id, n, s, e)
        finally:
            # Every part is sent: the buffers go back to the mount's budget.
            self._drop_holds()
            self._buffers.close()
        if self.abandoned:
            raise CosEncFsError(f"streamed upload of {self.key!r} abandoned while finishing")
        parts = sorted((n, self.etags[n]) for n, _, _ in layout)
        tags = [t for n, _, _ in layout for t in self.part_tags[n]]
        final = await self.ctx.tags.seal(self.key, size, metadata, tags)
        etag = await self.store.complete_multipart(self.key, upload_id, parts)
        self.journal.set_upload(self.fid, None, {})
        if final != self.metadata:
            # The final size and mtime were unknown when the upload started.
            etag = await put_final_metadata(
                self.store, self.key, etag, final, content_type=self.content_type, size=size
            )
        log.debug("streamed %r: %d parts, %d sent at close", self.key, len(layout), len(missing))
        return etag, final, tags

    def abandon(self) -> None:
        """The layer changed below the sealed mark, or went away."""
        if self.abandoned:
            return
        self.abandoned = True
        self._drop_holds()
        self._buffers.close()
        if self.upload_id is not None:
            # Out of the journal at once: this stream aborts it, nobody else.
            self.journal.set_upload(self.fid, None, {})
            self._nursery.start_soon(self._abort)

    async def abandon_now(self) -> None:
        self.abandoned = True
        self._drop_holds()
        self._buffers.close()
        await self._abort()

    async def _abort(self) -> None:
        upload_id, self.upload_id = self.upload_id, None
        if upload_id is None:
            return
        with trio.CancelScope(shield=True):
            try:
                await self.store.abort_multipart(self.key, upload_id)
            except StoreError as exc:
                log.warning("could not abort the upload of %r: %s", self.key, exc)
            try:
                self.journal.set_upload(self.fid, None, {})
            except OSError:
                pass
