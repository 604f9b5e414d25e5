"""A sealed file's multipart upload, each part sent as soon as it is produced.

A commit of a file larger than one PUT used to produce the whole upload
copy, read it all back for its chunk tags, store the tags' companion, and
only then initiate the upload and send the parts: every step waited for the
one before, and the network sat idle while the CPU worked (a 64 MiB file
rewritten in 2000 random places spent ~0.3 s of its ~0.53 s fsync there at
10 ms: docs/performance.md, section "rwup").  Here

- the InitiateMultipartUpload goes out at once, while the first parts are
  produced: its metadata is the object's final one without the integrity
  tags (the size and attributes are known once the head is sealed);
- parts are produced in order, :data:`PRODUCERS` at a time, each in one
  worker job that also feeds its ciphertext to the part's chunk tagger
  (``assemble.produce_tagged``: no second read for the tags), and each part's
  PUT starts as soon as it is produced (from the copy, as before);
- once the last part is tagged, the tags are sealed and their companion is
  stored while the last PUTs are still on the wire;
- after the CompleteMultipartUpload, a server-side copy onto itself puts
  the metadata with the tags (no data moved), as a streamed upload does
  (cosencfs/fs/stream.py), ``If-Match`` the completed object.

The journal is as before: the sealed layer with its envelope first (the
commit), the upload id once initiated, each part as it is sent.  A failure
of the store keeps the upload for a resume (the commit's next attempt sends
only the missing parts, cosencfs/fs/upload.py); anything else aborts it.  A
crash between the complete and the metadata copy is the streamed upload's
case: recovery finds its envelope in COS and puts the tagged metadata
(cosencfs/fs/reconcile.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import trio

from cosencfs.cache import assemble
from cosencfs.cache.content import ObjectContent
from cosencfs.cache.dirtylog import DirtyLayer
from cosencfs.crypto.integrity import CHUNK_SIZE, ChunkTagger, VerifiedContent
from cosencfs.errors import CosEncFsError, StoreError
from cosencfs.fs.context import FsContext
from cosencfs.fs.upload import Uploader, parts_of, put_final_metadata
from cosencfs.store.base import FileRange
from cosencfs.util import open_nursery

log = logging.getLogger(__name__)

#: Parts produced at once by one upload: the machine's cores, not more, so the
#: first parts are ready (and on the wire) first.
PRODUCERS = 2


def _ignore(_ciphertext: bytes) -> None:
    """Not tagging (a public-key-only mount): the ciphertext is not needed."""


class PipelinedUpload:
    """One sealed layer's upload: parts produced, tagged and sent in a pipeline."""

    def __init__(
        self,
        ctx: FsContext,
        uploader: Uploader,
        *,
        key: str,
        layer: DirtyLayer,
        staged: ObjectContent,
        metadata: Mapping[str, str],
        content_type: str,
        fid: str,
    ) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.uploader = uploader
        self.key = key
        self.layer = layer
        self.staged = staged
        self.metadata = dict(metadata)
        self.content_type = content_type
        self.fid = fid
        self.layout = parts_of(staged.size)
        self.upload_id: str | None = None
        self.etags: dict[int, str] = {}
        self.part_tags: dict[int, list[bytes]] = {}
        self._initiated = trio.Event()
        self._sealed: tuple[dict[str, str], VerifiedContent | None] | None = None

    async def run(self) -> tuple[str, dict[str, str], VerifiedContent | None]:
        """Upload the layer: the object's ETag, its final metadata and verified content."""
        size = self.staged.size
        try:
            async with open_nursery() as nursery:
                nursery.start_soon(self._initiate)
                turns = trio.Semaphore(PRODUCERS)
                for n, start, end in self.layout:
                    # Taken here, in part order: the first parts are produced first.
                    await turns.acquire()
                    nursery.start_soon(self._part, nursery, turns, n, start, end)
            if not self.staged.complete:
                raise CosEncFsError(f"upload of {self.key!r}: its copy is not complete")
            upload_id = self.upload_id
            if upload_id is None or self._sealed is None:
                raise CosEncFsError(f"upload of {self.key!r} ended without all its parts")
            parts = sorted(self.etags.items())
            etag = await self.store.complete_multipart(self.key, upload_id, parts)
        except StoreError:
            # Kept for a resume: the parts sent so far are not lost.
            raise
        except BaseException:
            if self.upload_id is not None:
                with trio.CancelScope(shield=True):
                    await self.uploader.abort(self.key, self.upload_id)
                    self.ctx.journal.set_upload(self.fid, None, {})
            raise
        self.ctx.journal.set_upload(self.fid, None, {})
        final, verified = self._sealed
        if final != self.metadata:
            # The integrity tags, unknown when the upload was initiated.
            etag = await put_final_metadata(
                self.store, self.key, etag, final, content_type=self.content_type, size=size
            )
        log.debug("uploaded %r: %d parts, produced as they went", self.key, len(self.layout))
        return etag, final, verified

    async def _initiate(self) -> None:
        self.upload_id = await self.store.create_multipart(
            self.key, self.metadata, content_type=self.content_type
        )
        self.ctx.journal.set_upload(self.fid, self.upload_id, {})
        self._initiated.set()

    async def _part(
        self, nursery: trio.Nursery, turns: trio.Semaphore, n: int, start: int, end: int
    ) -> None:
        try:
            self.part_tags[n] = await self._produce(start, end)
        finally:
            turns.release()
        if len(self.part_tags) == len(self.layout):
            # Every tag is known: sealed (and the companion stored) beside the last PUTs.
            nursery.start_soon(self._seal)
        await self._initiated.wait()
        upload_id = self.upload_id
        if upload_id is None:
            raise CosEncFsError(f"upload of {self.key!r} has no upload id")
        async with self.uploader.part_limiter:
            self.etags[n] = await self.store.upload_part(
                self.key, upload_id, n, FileRange(self.staged.path, start, end - start)
            )
        # Each finished part is remembered, so a crash resumes after it.
        self.ctx.journal.set_upload(self.fid, upload_id, self.etags)

    async def _produce(self, start: int, end: int) -> list[bytes]:
        """Produce ``[start, end)`` of the copy (what is missing of it); its chunk tags."""
        dk = self.layer.object_dk
        if dk is None:
            raise CosEncFsError(f"upload of {self.key!r} without a data key")
        if start % CHUNK_SIZE:
            raise CosEncFsError(f"part of {self.key!r} at {start}, not on a chunk boundary")
        ck = self.ctx.tags.chunk_key(dk)
        tagger = None if ck is None else ChunkTagger(ck, first_chunk=start // CHUNK_SIZE)
        feed = _ignore if tagger is None else tagger.update
        await assemble.produce_tagged(self.ctx.cache, self.layer, self.staged, start, end, feed)
        return [] if tagger is None else tagger.finish()

    async def _seal(self) -> None:
        tags = [t for n, _, _ in self.layout for t in self.part_tags[n]]
        self._sealed = await self.ctx.tags.seal_own(self.key, self.staged.size, self.metadata, tags)
