"""Finishing the uploads an earlier run left in the journal (after a crash).

Runs when a mount starts, before it goes live, so the namespace the user sees
already holds the recovered files.  Each record names the object key, the
cache file, its present ranges, the wrapped data key and where missing bytes
come from; the version is reopened, completed and uploaded exactly as a
normal commit would.  A multipart upload that was under way is resumed: parts
already in COS with the recorded ETags are kept, only the others are sent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from cosencfs.cache.content import ContentVersion, Source
from cosencfs.cache.extents import Extents
from cosencfs.cache.journal import DirtyRecord
from cosencfs.crypto.envelope import ObjectFormat, classify
from cosencfs.errors import CosEncFsError, CryptoError, NotFoundError, TransientError
from cosencfs.fs.attrs import META_SIZE
from cosencfs.fs.context import FsContext
from cosencfs.fs.files import Files

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


async def recover(ctx: FsContext, files: Files) -> RecoveryReport:
    report = RecoveryReport()
    records = ctx.journal.dirty_records()
    if records:
        log.info("finishing %d uploads left by the last run", len(records))
    for rec in records:
        try:
            await _recover_one(ctx, files, rec)
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
    report.orphan_files = ctx.cache.sweep_orphans({rec.vid for rec in remaining})
    report.aborted_uploads = await _abort_orphan_uploads(
        ctx, files, {r.upload_id for r in remaining if r.upload_id}
    )
    return report


async def _abort_orphan_uploads(ctx: FsContext, files: Files, keep: set[str]) -> int:
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
        await files.uploader.abort(up.key, up.upload_id)
        aborted += 1
    if aborted:
        log.info("aborted %d abandoned multipart uploads", aborted)
    return aborted


async def _recover_one(ctx: FsContext, files: Files, rec: DirtyRecord) -> None:
    path = ctx.cache.data_dir / rec.vid
    if not path.exists():
        raise CosEncFsError(f"cache file {rec.vid} is missing")
    dk = ctx.codec.open(rec.envelope, key=rec.key)
    source = None
    if rec.source is not None:
        s = rec.source
        src_dk = None
        if s.envelope and classify(s.envelope) is not ObjectFormat.PLAIN:
            src_dk = ctx.codec.open(s.envelope, key=s.key)
        source = Source(s.key, s.etag, src_dk, s.limit, dict(s.envelope))
    # The cache file may hold more than the journal knows (writes after the
    # last close): only the recorded ranges count; the rest is fetched again.
    v = ctx.cache.reopen(
        rec.vid, dk, rec.envelope, rec.size, source, Extents.from_list(rec.present)
    )
    try:
        await _upload(ctx, files, rec, v)
    finally:
        ctx.cache.discard(v)


async def _upload(ctx: FsContext, files: Files, rec: DirtyRecord, v: ContentVersion) -> None:
    try:
        while not v.complete:
            await ctx.cache.fill_all(v)
    except NotFoundError as exc:
        raise CosEncFsError(
            f"the object {rec.source.key if rec.source else rec.key!r} the file started "
            "from is gone, and the cache holds only part of the new content"
        ) from exc
    v.sealed = True
    meta = {**rec.envelope, **rec.attrs, META_SIZE: str(v.size)}
    etag = await files.uploader.upload(
        rec.key,
        v,
        meta,
        content_type=rec.content_type or "application/octet-stream",
        fid=rec.fid,
        resume=(rec.upload_id, rec.parts) if rec.upload_id else None,
    )
    ctx.journal.put_attrs(rec.key, etag, v.size, None, meta)
    ctx.journal.delete_dirty(rec.fid)
    log.info("recovered %r (%d bytes)", rec.key, v.size)
