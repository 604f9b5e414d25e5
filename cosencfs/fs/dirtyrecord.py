"""A dirty file's journal record: what a crash must not lose.

The record (cosencfs/cache/journal.py) names the file's object key and
attributes, every dirty layer it needs (log id, how many bytes count, the
cache key wrapped under the master key), the object the bottom layer reads
through to, and once sealed the new object's envelope.  It is written at
``close()`` (so data whose close returned survives a crash), at truncate, at
sealing and at each streamed part, and removed once the object is committed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import trio

from cosencfs.cache.dirtylog import DirtyLayer, LayerState
from cosencfs.cache.records import DirtyRecord, LayerRecord, SourceRecord
from cosencfs.fs import xattrs
from cosencfs.fs.attrs import FILE_CONTENT_TYPE, attrs_to_meta
from cosencfs.fs.context import FsContext
from cosencfs.fs.inode import Inode
from cosencfs.fs.upload import Uploader

log = logging.getLogger(__name__)

#: Below this, uploads are single PUTs (the default single_put_max is larger).
MULTIPART_MIN = 1024 * 1024

#: Seconds after a record's delete (``forget``) by which it is in the journal
#: even if nothing else writes there (cosencfs/cache/journal.py, ``delete_dirty``).
FORGET_DELAY = 0.2


@dataclass(slots=True, frozen=True)
class Journaled:
    """What a file's journal record says, to skip writing the same record twice."""

    key: str
    #: (vid, log bytes, size, limit, direct bytes, burned) of each layer, newest first.
    layers: tuple[tuple[str, int, int, int, int, bool], ...]
    meta_gen: int
    keyed: bool
    sealed: bool


class DirtyRecords:
    def __init__(self, ctx: FsContext, uploader: Uploader) -> None:
        self.ctx = ctx
        self.uploader = uploader
        self._flush_due = False

    def record(self, node: Inode) -> None:
        """Journal what ``node`` holds that COS does not (close, truncate, seal)."""
        if node.unlinked:
            # Its record went with its name (an unlinked file's content never
            # goes up; its object goes at the last close): one written now, by
            # a truncate or a seal of a file still open, would have recovery
            # upload the deleted file after a crash.
            return
        f = node.file
        head = None if f is None else f.head
        if f is None or head is None:  # a directory (a marker not yet sent) has no record
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
        if f.journaled == signature:
            return
        prev = f.journaled
        if (
            signature.sealed
            and isinstance(prev, Journaled)
            and prev == replace(signature, sealed=False)
            and signature.keyed
        ):
            # Sealing a head journaled at close with its object key already
            # drawn (a direct copy): all the record holds is the same but the
            # head's sealed flag (the signature covers the rest).
            if len(chain) == 1 and head.source is None and self._one_put(head):
                # A new file (nothing below it) going up in one PUT: the flag
                # need not be written at all.  It only lets recovery recognise
                # a landed upload by its envelope (a base to rebase, parts to
                # resume); without it, a crash after this PUT replays the
                # record under a fresh key (the direct copy's key counts as
                # burned), sending the same bytes again: no base is read, no
                # counter block reused (docs/reliability.md).  One SQLite
                # transaction less per small file.
                return
            if self.ctx.journal.seal_dirty(f.fid, head.vid):
                # Only the flag changes.  Lower layers are frozen (never OPEN).
                f.journaled = signature
                return
        if isinstance(prev, Journaled) and self.ctx.nursery is not None:
            prev_vid, _, prev_size = prev.layers[0][:3]
            # Only a multipart upload records an upload id: look only then.
            if prev_vid != head.vid and prev_size > MULTIPART_MIN:
                old = self.ctx.journal.get_dirty(f.fid)
                # A layer still uploading (a commit under way, the new head
                # written on top of it) completes its upload: not to abort.
                uploading = {x.vid for x in chain if x.uploading}
                if (
                    old is not None
                    and old.upload_id
                    and old.vid != head.vid
                    and old.vid not in uploading
                ):
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
                envelope=dict(x.envelope) if x.object_dk is not None else None,
            )
            if x.direct is not None:
                rec.direct_vid, rec.direct_end, rec.burned = x.direct.vid, x.direct_end, x.burned
                rec.direct_envelope = dict(x.direct_envelope)
            layers.append(rec)
        src = None
        bottom = chain[-1].source
        if bottom is not None:
            src = SourceRecord(bottom.key, bottom.etag, dict(bottom.envelope), bottom.limit)
        self.ctx.journal.log_dirty(
            DirtyRecord(
                fid=f.fid,
                key=key,
                vid=head.vid,
                size=head.size,
                attrs={**attrs_to_meta(node.attrs), **xattrs.fields(self.ctx, node, key)},
                content_type=FILE_CONTENT_TYPE,
                source=src,
                layers=layers,
                object_envelope=dict(head.envelope) if head.object_dk is not None else None,
            )
        )
        f.journaled = signature

    def _one_put(self, head: DirtyLayer) -> bool:
        """Whether ``head``'s commit is one PUT (no multipart upload to resume)."""
        return head.stream is None and head.size <= self.uploader.single_put_max

    def forget(self, node: Inode) -> None:
        """The file's content is in COS (or gone): no record any more."""
        f = node.file
        if f is None:
            return  # a directory: never journaled
        journal = self.ctx.journal
        journal.delete_dirty(f.fid)  # with the journal's next write (one transaction less)
        f.journaled = None
        if self.ctx.nursery is None:
            journal.flush_deferred()
        elif not self._flush_due:
            # Checked and set with no await between: one flusher at a time.
            self._flush_due = True
            self.ctx.spawn(self._flush_later)

    async def _flush_later(self) -> None:
        """Write deferred deletes a moment later if no other journal write did."""
        try:
            await trio.sleep(FORGET_DELAY)
        finally:
            self._flush_due = False
        try:
            self.ctx.journal.flush_deferred()
        except OSError as exc:  # a full disk: the next write, or recovery, deletes them
            log.warning("cache journal: records of committed files not deleted yet (%s)", exc)
