"""Finishing the uploads an earlier run left in the journal (after a crash).

Runs when a mount starts, before it goes live, so the namespace the user sees
already holds the recovered files.  Each record names the object key, the
file's dirty layers (logs in the cache directory, each with the length that
counts and its wrapped cache key) and where the bytes below them come from;
the layers are replayed, sealed, produced and uploaded exactly as a normal
commit would.  A sealed head keeps the object envelope it was given, so a
multipart upload that was under way is resumed: parts already in COS with
the recorded ETags are kept (the same plaintext under the same key gives the
same ciphertext), only the others are sent.

Records of format 1 (releases before the dirty-log cache: one cache file of
ciphertext under the version's own key) are converted first: their bytes
are decrypted and written as records of a new layer, and uploaded under a
fresh object key, never the old one (that release could have reused it).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from cosencfs.cache import assemble
from cosencfs.cache.content import Source
from cosencfs.cache.dirtylog import DirtyLayer, LayerState
from cosencfs.cache.legacy import read_legacy
from cosencfs.cache.records import FORMAT_LEGACY, DirtyRecord, LayerRecord, SourceRecord
from cosencfs.crypto.ctr import DataKey
from cosencfs.crypto.envelope import ObjectFormat, classify
from cosencfs.crypto.integrity import OBJECT_TAG_FIELD
from cosencfs.errors import (
    CosEncFsError,
    CryptoError,
    NotFoundError,
    PreconditionFailedError,
    TransientError,
)
from cosencfs.fs.attrs import META_SIZE
from cosencfs.fs.context import FsContext
from cosencfs.fs.reconcile import reconcile
from cosencfs.fs.upload import Uploader

log = logging.getLogger(__name__)

#: Multipart uploads older than this, not in the journal, are abandoned.
ORPHAN_UPLOAD_AGE = 24 * 3600.0


@dataclass(slots=True)
class RecoveryReport:
    uploaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    orphan_files: int = 0
    aborted_uploads: int = 0


class RecoveryError(CosEncFsError):
    """Uploads left by the last run cannot be finished now (COS unreachable)."""


async def recover(ctx: FsContext, uploader: Uploader) -> RecoveryReport:
    report = RecoveryReport()
    records = ctx.journal.dirty_records()
    if records:
        log.info("finishing %d uploads left by the last run", len(records))
    for rec in records:
        try:
            await _recover_one(ctx, uploader, rec)
        except TransientError as exc:
            raise RecoveryError(
                f"cannot finish the upload of {rec.key!r} left by the last run: {exc}"
            ) from exc
        except (CryptoError, OSError, CosEncFsError) as exc:
            # Kept in the journal: nothing is dropped silently; the log says why
            # at every mount until someone looks.
            report.failed[rec.key] = str(exc)
            log.error("cannot recover %r from the cache journal: %s", rec.key, exc)
        else:
            report.uploaded.append(rec.key)
    remaining = ctx.journal.dirty_records()
    keep = {rec.vid for rec in remaining}
    for rec in remaining:
        keep |= {x.vid for x in rec.layers} | {x.direct_vid for x in rec.layers if x.direct_vid}
    report.orphan_files = ctx.cache.sweep_orphans(keep)
    report.aborted_uploads = await _abort_orphan_uploads(
        ctx, uploader, {r.upload_id for r in remaining if r.upload_id}
    )
    return report


async def _abort_orphan_uploads(ctx: FsContext, uploader: Uploader, keep: set[str]) -> int:
    """Abort multipart uploads under the mount's prefix that nobody will finish.

    Uploads of a running cosencfs (this bucket may be mounted elsewhere) are
    young; anything older than ``ORPHAN_UPLOAD_AGE`` is a leftover.  Those
    recorded in this journal are kept for resuming.
    """
    cutoff = time.time() - ORPHAN_UPLOAD_AGE
    aborted = 0
    for up in await ctx.store.list_uploads(ctx.options.prefix):
        if up.upload_id in keep or up.initiated > cutoff:
            continue
        await uploader.abort(up.key, up.upload_id)
        aborted += 1
    if aborted:
        log.info("aborted %d abandoned multipart uploads", aborted)
    return aborted


async def _recover_one(ctx: FsContext, uploader: Uploader, rec: DirtyRecord) -> None:
    if rec.format == FORMAT_LEGACY:
        head = await _convert_legacy(ctx, rec)
    else:
        # The crash may have come after COS took an upload and before the
        # journal knew (cosencfs/fs/reconcile.py).
        found = await reconcile(ctx, rec)
        if found is None:
            return
        rec = found
        head = _reopen(ctx, rec, await _source(ctx, rec.source))
    try:
        await _upload(ctx, uploader, rec, head)
    except BaseException:
        # The journal still names these logs: keep them for the next try.
        ctx.cache.layers.release_chain(head)
        raise
    ctx.cache.layers.retire_chain(head)


async def _source(ctx: FsContext, s: SourceRecord | None) -> Source | None:
    """The recorded base of a dirty file; its tags checked when the record has them.

    Bases recorded with the object's whole metadata (read through the mount,
    or uploaded by it) carry its tags: the object's size is the one it was
    written with, and every fetch is If-Match the recorded ETag.
    """
    if s is None:
        return None
    dk = None
    if s.envelope and classify(s.envelope) is not ObjectFormat.PLAIN:
        dk = ctx.codec.open(s.envelope, key=s.key)
    verified = None
    written = s.envelope.get(META_SIZE)
    if dk is not None and OBJECT_TAG_FIELD in s.envelope and written is not None:
        verified = await ctx.tags.verify(s.key, int(written), s.envelope)
    return Source(s.key, s.etag, dk, s.limit, dict(s.envelope), verified)


def _reopen(ctx: FsContext, rec: DirtyRecord, source: Source | None) -> DirtyLayer:
    """The record's layers, bottom first, each log replayed to the length that counts."""
    if not rec.layers:
        raise CosEncFsError(f"journal record of {rec.key!r} names no cache layer")
    below: DirtyLayer | None = None
    opened: list[DirtyLayer] = []
    try:
        for x in reversed(rec.layers):
            if x.end and not os.path.exists(ctx.cache.layers.path(x.vid)):
                raise CosEncFsError(f"cache log {x.vid} of {rec.key!r} is missing")
            layer = ctx.cache.layers.reopen(
                x.vid,
                ctx.codec.unwrap_cache_key(x.key, x.vid),
                size=x.size,
                limit=x.limit,
                log_end=x.end,
                below=below,
                source=source if below is None else None,
            )
            layer.wrapped_key = x.key
            layer.state = LayerState.SEALED
            opened.append(layer)
            below = layer
            if x.direct_vid is not None and x.direct_envelope is not None:
                _reopen_direct(ctx, rec, layer, x)
    except BaseException:
        if opened:
            ctx.cache.layers.release_chain(opened[-1])
        raise
    if below is None:
        raise CosEncFsError(f"journal record of {rec.key!r} names no cache layer")
    head = below
    if rec.object_envelope is not None and rec.layers[0].sealed:
        # Sealed before the crash: the same key again, so parts already sent
        # stay valid (same plaintext, same key and counters, same bytes).
        head.object_dk = ctx.codec.open(rec.object_envelope, key=rec.key)
        head.envelope = dict(rec.object_envelope)
        if head.direct is not None and not head.burned:
            head.staged = head.direct
            head.copy_dk = head.object_dk
    return head


def _reopen_direct(ctx: FsContext, rec: DirtyRecord, layer: DirtyLayer, x: LayerRecord) -> None:
    """The layer's direct copy: its first ``direct_end`` bytes count.

    Unless the layer was sealed when journaled, writes may have gone into
    the copy after the record was made: its key is burned, so nothing is
    ever encrypted under it again (the upload draws a fresh one).
    """
    if x.direct_vid is None or x.direct_envelope is None:
        return
    if not ctx.cache.file_path(x.direct_vid).exists():
        raise CosEncFsError(f"cache file {x.direct_vid} of {rec.key!r} is missing")
    dk = ctx.codec.open(x.direct_envelope, key=rec.key)
    layer.direct = ctx.cache.reopen_copy(x.direct_vid, dk, x.direct_end)
    layer.direct_end = x.direct_end
    layer.direct_envelope = dict(x.direct_envelope)
    layer.burned = x.burned or not x.sealed


async def _convert_legacy(ctx: FsContext, rec: DirtyRecord) -> DirtyLayer:
    """A format-1 record: its cache file's bytes become records of a new layer."""
    path = ctx.cache.file_path(rec.vid)
    if not path.exists():
        raise CosEncFsError(f"cache file {rec.vid} is missing")
    old_dk = ctx.codec.open(rec.envelope, key=rec.key)
    source = await _source(ctx, rec.source)
    limit = rec.source.limit if rec.source is not None else 0
    layer = ctx.cache.layers.new(size=rec.size, limit=min(limit, rec.size), source=source)
    try:
        read_legacy(
            path,
            old_dk,
            rec.present,
            rec.size,
            lambda pos, plain: layer.apply_write(*layer.append_write(pos, plain)),
        )
    except BaseException:
        ctx.cache.layers.retire(layer)  # new, named by no record: the legacy file stays
        raise
    layer.state = LayerState.SEALED
    log.info("converted %r from a cache file of an older release", rec.key)
    return layer


async def _upload(ctx: FsContext, uploader: Uploader, rec: DirtyRecord, head: DirtyLayer) -> None:
    if head.object_dk is None:
        head.object_dk = DataKey.generate()
        head.envelope = ctx.codec.seal(head.object_dk)
    size = head.size
    staged = ctx.cache.upload_copy(head, size)
    staged.size = size
    try:
        await assemble.produce(ctx.cache, head, staged, 0, size)
    except NotFoundError as exc:
        raise CosEncFsError(
            f"the object {rec.source.key if rec.source else rec.key!r} the file started "
            "from is gone, and the cache holds only part of the new content"
        ) from exc
    except PreconditionFailedError as exc:
        # Neither the version the record builds on nor an upload of ours:
        # someone else wrote the object since.  Kept for someone to look at.
        raise CosEncFsError(
            f"the object {rec.source.key if rec.source else rec.key!r} the file started "
            f"from was replaced in COS by another writer (PreconditionFailed): {exc}"
        ) from exc
    meta = {**head.envelope, **rec.attrs, META_SIZE: str(size)}
    tags = await ctx.tags.tag_copy(staged.path, head.object_dk, 0, size, ctx.cache.io_limiter)
    meta = await ctx.tags.seal(rec.key, size, meta, tags)
    resume = None
    if rec.upload_id and rec.object_envelope == head.envelope:
        resume = (rec.upload_id, rec.parts)
    elif rec.upload_id:
        # Parts sent under a key this run does not have: start afresh.
        await uploader.abort(rec.key, rec.upload_id)
    etag = await uploader.upload(
        rec.key,
        staged,
        meta,
        content_type=rec.content_type or "application/octet-stream",
        fid=rec.fid,
        resume=resume,
    )
    ctx.journal.put_attrs(rec.key, etag, size, None, meta)
    ctx.tags.wrote(rec.key, meta, rec.source.envelope if rec.source is not None else None)
    ctx.journal.delete_dirty(rec.fid)
    log.info("recovered %r (%d bytes)", rec.key, size)
