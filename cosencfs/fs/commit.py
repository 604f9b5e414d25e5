"""Committing a file to COS: seal its head, produce the upload, send it, adopt it.

A commit takes the file's upload lock (one commit per file at a time), then

1. *seals* the head under the lock writers take, with no await between the
   check and the change: a write already under way finishes first, and a
   write that comes later finds the head sealed and starts a new one;
2. draws the new object's data key and IV (once per sealed head: a retry
   after a failure or a crash reuses them for the same content) and
   journals the sealed state, so a crash resumes the same upload;
3. *produces* the upload copy: the head's plaintext encrypted once under the
   object key at the object's offsets (cosencfs/cache/assemble.py);
4. uploads that copy (one PUT, or parallel multipart parts) and, on
   success, keeps it as the file's clean copy; the sealed layers go.

Writes made during the upload went to a newer head, which now starts from
the new object: the file stays dirty and is committed again.
"""

from __future__ import annotations

import logging
import time

import trio

from cosencfs.cache import assemble
from cosencfs.cache.content import ObjectContent, Source
from cosencfs.cache.dirtylog import DirtyLayer, LayerState
from cosencfs.cache.metamap import pack
from cosencfs.crypto.ctr import DataKey
from cosencfs.crypto.integrity import VerifiedContent
from cosencfs.fs import xattrs
from cosencfs.fs.attrload import AttrLoader
from cosencfs.fs.attrs import FILE_CONTENT_TYPE, META_SIZE, attrs_to_meta
from cosencfs.fs.context import FsContext
from cosencfs.fs.dirops import put_marker
from cosencfs.fs.dirtyrecord import DirtyRecords
from cosencfs.fs.inode import Inode, Remote
from cosencfs.fs.pipeline import PipelinedUpload
from cosencfs.fs.special import put_special, tagged_now
from cosencfs.fs.stream import StreamUpload
from cosencfs.fs.tags import INLINE_TAG
from cosencfs.fs.upload import Uploader
from cosencfs.util import acquire

log = logging.getLogger(__name__)


class Committer:
    def __init__(
        self, ctx: FsContext, attrs: AttrLoader, records: DirtyRecords, uploader: Uploader
    ) -> None:
        self.ctx = ctx
        self.attrs = attrs
        self.records = records
        self.uploader = uploader

    async def commit(self, node: Inode) -> None:
        """Put ``node``'s content and attributes in COS."""
        async with node.upload_lock:
            if node.unlinked:
                return
            if node.is_dir:
                if node.meta_dirty and node.parent is not None:
                    await xattrs.ensure_loaded(self.ctx, node)  # the marker is rewritten
                    await put_marker(self.ctx, node)
                return
            if node.kind.special:
                if node.meta_dirty:
                    key = self.ctx.key_of(node)
                    await put_special(self.ctx, node, key, tagged=tagged_now(self.ctx, node, key))
                    self.records.forget(node)
                return
            # Both rewrite the object: its extended attributes must be known.
            await xattrs.ensure_loaded(self.ctx, node)
            while True:
                head = node.as_file.head
                if head is None:
                    if node.meta_dirty:
                        await self._commit_attrs(node)
                    return
                if await self._commit_content(node, head):
                    return

    async def _commit_content(self, node: Inode, head: DirtyLayer) -> bool:
        """Upload ``head``; False when it was replaced while this waited for its lock."""
        lock = head.lock
        await acquire(lock)
        try:
            # The checks and the change with no await between: writers and
            # truncate take this lock too, so none is half-way through the head.
            top = node.as_file.head
            if head.state is LayerState.RETIRED or top is None or not top.holds_layer(head):
                # truncate(0) replaced and retired it meanwhile: its bytes are
                # gone, and producing it again would encrypt other bytes under
                # the key its direct copy used.  Commit what is there now.
                return False
            if head.state is LayerState.OPEN:
                head.state = LayerState.SEALED
            if head.object_dk is None:
                head.object_dk = DataKey.generate()
                head.envelope = self.ctx.codec.seal(head.object_dk)
        finally:
            lock.release()
        key = self.ctx.key_of(node)
        gen = node.meta_gen
        size = head.size
        meta = {
            **head.envelope,
            **attrs_to_meta(node.attrs),
            **xattrs.fields(self.ctx, node, key),
            META_SIZE: str(size),
        }
        head.uploading = True
        try:
            self.records.record(node)
            staged = self.ctx.cache.upload_copy(head, size)
            staged.size = size
            done: tuple[str, dict[str, str], list[bytes]] | None = None
            verified: VerifiedContent | None = None
            stream = head.stream
            if isinstance(stream, StreamUpload):
                head.stream = None
                if stream.key == key and size > self.uploader.single_put_max:
                    done = await stream.finish(size, meta)
                else:
                    await stream.abandon_now()  # renamed, or shrank to a simple PUT
            resume = None if done is not None else self._resume(node, head, key, size)
            if done is None and size > self.uploader.single_put_max and resume is None:
                # Parts produced and sent in a pipeline, the upload initiated at once.
                etag, meta, verified = await PipelinedUpload(
                    self.ctx,
                    self.uploader,
                    key=key,
                    layer=head,
                    staged=staged,
                    metadata=meta,
                    content_type=FILE_CONTENT_TYPE,
                    fid=node.as_file.fid,
                ).run()
            elif done is None:
                await assemble.produce(self.ctx.cache, head, staged, 0, size)
                body: bytes | None = None
                if size <= INLINE_TAG:
                    # Read once, on the loop: tagged, and sent from memory.
                    body, tags = self.ctx.tags.small_copy(staged.path, head.object_dk, size)
                else:
                    tags = await self.ctx.tags.tag_copy(
                        staged.path, head.object_dk, 0, size, self.ctx.cache.io_limiter
                    )
                meta, verified = await self.ctx.tags.seal_own(key, size, meta, tags)
                etag = await self.uploader.upload(
                    key,
                    staged,
                    meta,
                    content_type=FILE_CONTENT_TYPE,
                    fid=node.as_file.fid,
                    resume=resume,
                    body=body,
                )
            else:
                etag, meta, tags = done
                verified = self.ctx.tags.own(key, size, meta, tags)
        except BaseException:
            head.uploading = False
            top = node.as_file.head
            if top is None or not top.holds_layer(head):
                # Replaced while it was uploading (truncated to zero): the
                # journal names only the new content, nobody needs this any more.
                self.ctx.cache.layers.retire_chain(head)
            raise
        head.uploading = False
        old = node.remote.metadata if node.remote is not None else None
        self._adopt(node, head, staged, key, etag, meta, verified)
        self.ctx.tags.wrote(key, meta, old)
        node.meta_synced_gen = gen
        if node.dirty:
            self.records.record(node)
        else:
            self.records.forget(node)
        # Only now that the journal no longer names them do the logs go.
        self.ctx.cache.layers.retire_chain(head)
        log.debug("committed %r (%d bytes)", key, size)
        return True

    def _adopt(
        self,
        node: Inode,
        head: DirtyLayer,
        staged: ObjectContent,
        key: str,
        etag: str,
        meta: dict[str, str],
        verified: VerifiedContent | None,
    ) -> None:
        """The upload of ``head`` succeeded: its copy is the file's clean copy now.

        ``verified``: the tags just sealed, which verify what is fetched back
        if the copy is evicted.
        """
        if head.object_dk is None:
            raise RuntimeError("adopting a layer that was never sealed")
        cache = self.ctx.cache
        size = staged.size
        # One packed metadata for the copy and the inode (read-only): held
        # once, not twice (cosencfs/cache/metamap.py).
        packed = pack(meta)
        source = Source(key, etag, head.object_dk, size, packed, verified)
        cache.adopt(staged, source)
        head.staged = None
        if head.direct is staged:
            head.direct = None  # the clean copy now, not the layer's to discard
        f = node.as_file
        node.remote = Remote(etag, size, time.time(), packed)
        f.size = size
        node.touched_at = node.validated_at = trio.current_time()
        self.ctx.journal.put_attrs(key, etag, size, None, meta)
        old = f.clean
        f.clean = staged
        staged.owner = node
        if old is not None and old is not staged and old.pins == 0:
            cache.discard(old)
        if f.head is head:
            f.head = None
        else:
            # Written during the upload: the newer layer above now starts from
            # the object just made (the same bytes head held).
            layer = f.head
            while layer is not None and layer.below is not head:
                layer = layer.below
            if layer is not None:
                layer.below = None
                layer.source = source

    def _resume(
        self, node: Inode, head: DirtyLayer, key: str, size: int
    ) -> tuple[str, dict[int, str]] | None:
        """The multipart upload of ``head`` an earlier attempt left half-way, if any."""
        if size <= self.uploader.single_put_max:
            return None
        rec = self.ctx.journal.get_dirty(node.as_file.fid)
        if rec is not None and rec.upload_id and rec.vid == head.vid and rec.key == key:
            return (rec.upload_id, rec.parts)
        return None

    async def _commit_attrs(self, node: Inode) -> None:
        gen = node.meta_gen
        key = self.ctx.key_of(node)
        if node.remote is None:
            return
        if node.remote.metadata is None:
            await self.attrs.ensure(node)
        remote = node.remote
        if remote is None or remote.metadata is None:
            return  # gone while we looked
        sealed = xattrs.fields(self.ctx, node, key)  # (opens the old field first)
        meta = self.ctx.tags.with_attr_tag(
            key,
            {**xattrs.without_field(remote.metadata), **attrs_to_meta(node.attrs), **sealed},
            is_dir=False,
        )
        self.ctx.journal.forget_attrs_now(key)
        etag = await self.ctx.store.copy(
            key,
            key,
            metadata=meta,
            content_type=FILE_CONTENT_TYPE,
            headers=remote.headers,
            if_match=remote.etag,
            size=remote.size,
        )
        node.remote = Remote(etag, remote.size, time.time(), meta, remote.headers)
        node.meta_synced_gen = gen
        node.touched_at = trio.current_time()
        self.ctx.journal.put_attrs(key, etag, remote.size, None, meta)
        clean = node.as_file.clean
        if clean is not None:
            self.ctx.cache.rekey(clean, key, etag)
        if not node.dirty:
            self.records.forget(node)
