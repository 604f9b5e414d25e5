"""Recovery's first look at COS: what the crash left between the upload and the journal.

A commit journals the sealed layer with the envelope of the object it is
about to make, uploads, and only then rewrites the journal record.  A crash
in between leaves a record that still builds on the object's *old* version
while COS already holds the new one.  Replaying it as it stands would read
the old version's bytes with ``If-Match`` on its old ETag (412, at every
mount), or worse, read bytes that are not the base at all.

So before a record is replayed, recovery HEADs the object (one request, only
for records that have something to check) and decides:

* COS carries the envelope one of the record's sealed layers drew for its
  upload (wrapped key, IV and key check all equal: a fresh random wrap no one
  could have guessed before our upload landed), with that layer's size: that
  upload completed.  If it was the newest layer, the file is committed: at
  most its metadata is put right (a streamed upload cut off before its
  metadata copy), and the record goes.  If newer layers were journaled on top
  of it, they are rebased onto that object (its ETag, its data key, its size)
  and the record is rewritten: the layers below are committed and the
  sweep at the end of recovery deletes their logs.
* Otherwise the base the record names must be exactly there: same ETag,
  size and envelope.  Another version at that key (someone else wrote it)
  keeps today's answer: the replay reads the base with ``If-Match`` on the
  recorded ETag, fails with PreconditionFailed if it needs any of its bytes,
  and the record stays (logged at every mount) for someone to look at.  An
  object with the recorded ETag but another size or envelope is not the base
  (a body that is not ours under our metadata): that raises, it is never read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from cosencfs.cache.records import FORMAT_LAYERS, DirtyRecord, SourceRecord
from cosencfs.crypto.envelope import (
    IV_FIELD,
    KCV_FIELD,
    KEY_FIELD,
    KID_FIELD,
    VERSION_FIELD,
    WRAP_FIELD,
)
from cosencfs.crypto.integrity import OBJECT_TAG_FIELD
from cosencfs.errors import CosEncFsError, NotFoundError
from cosencfs.fs.attrs import FILE_CONTENT_TYPE, META_SIZE
from cosencfs.fs.context import FsContext
from cosencfs.store.base import ObjectInfo

log = logging.getLogger(__name__)

ENVELOPE_FIELDS = frozenset({KEY_FIELD, IV_FIELD, VERSION_FIELD, WRAP_FIELD, KID_FIELD, KCV_FIELD})


class BaseMismatchError(CosEncFsError):
    """The object a record builds on is not the one it names."""


def upload_envelopes(rec: DirtyRecord) -> list[tuple[int, dict[str, str]]]:
    """``(layer index, envelope)`` of each upload the layers may have made, newest first."""
    out = []
    for i, x in enumerate(rec.layers):
        if not x.sealed:
            continue  # never uploaded: a commit journals the layer sealed first
        env = x.envelope
        if env is None and i == 0:
            env = rec.object_envelope
        if env is None and x.direct_envelope is not None and not x.burned:
            env = x.direct_envelope  # rows written before the per-layer envelope
        if env:
            out.append((i, env))
    return out


def carries(metadata: Mapping[str, str], envelope: Mapping[str, str]) -> bool:
    """Whether an object's metadata holds exactly this envelope."""
    return bool(envelope) and all(metadata.get(k) == v for k, v in envelope.items())


async def _head(ctx: FsContext, key: str) -> ObjectInfo | None:
    try:
        return await ctx.store.head(key)
    except NotFoundError:
        return None


async def reconcile(ctx: FsContext, rec: DirtyRecord) -> DirtyRecord | None:
    """The record to replay (rebased if an upload of it landed), or None: all in COS."""
    if rec.format != FORMAT_LAYERS or not rec.layers:
        return rec
    candidates = upload_envelopes(rec)
    if not candidates and rec.source is None:
        return rec  # nothing uploaded, nothing read below: nothing to check
    info = await _head(ctx, rec.key)
    if info is not None:
        for i, env in candidates:
            if carries(info.metadata, env):
                return await _landed(ctx, rec, i, env, info)
    src = rec.source
    if src is not None:
        base = info if src.key == rec.key else await _head(ctx, src.key)
        if base is not None and base.etag == src.etag:
            check_base(src, base)
    return rec


def check_base(src: SourceRecord, info: ObjectInfo) -> None:
    """Raise unless the object with the recorded ETag is the recorded base."""
    written = info.metadata.get(META_SIZE)
    problems = []
    if info.size != src.limit:
        problems.append(f"{info.size} bytes, not {src.limit}")
    if written is not None and written != str(info.size):
        problems.append(f"written with {written} bytes but {info.size} long")
    if src.envelope and not carries(info.metadata, _envelope_only(src.envelope)):
        problems.append("another envelope")
    if problems:
        raise BaseMismatchError(
            f"the object {src.key!r} (ETag {src.etag}) the dirty file builds on is not "
            f"the one journaled ({'; '.join(problems)}): its bytes are not read"
        )


async def _tagged(
    ctx: FsContext, key: str, info: ObjectInfo, env: dict[str, str], meta: dict[str, str]
) -> dict[str, str]:
    """``meta`` with integrity tags for the object the crash left at ``key``.

    A single PUT carried its tags (only the attribute tag may need redoing); a
    streamed upload that completed without its final metadata copy has none,
    and its chunk tags were in memory only: they are computed again from the
    object's body, fetched with If-Match (the one place tags are computed
    from bytes read back from COS: docs/format.md, 12.10).
    """
    tags = ctx.tags
    if not tags.writing:
        return meta
    if OBJECT_TAG_FIELD in info.metadata:
        return tags.with_attr_tag(key, meta, is_dir=False)
    dk = ctx.codec.open(env, key=key)
    chunk_tags = await tags.tag_object(key, info.etag, dk, info.size)
    return await tags.seal(key, info.size, meta, chunk_tags)


def _envelope_only(meta: Mapping[str, str]) -> dict[str, str]:
    """The envelope fields of an object's metadata (attributes change, the envelope does not)."""
    return {k: v for k, v in meta.items() if k in ENVELOPE_FIELDS}


async def _landed(
    ctx: FsContext, rec: DirtyRecord, i: int, env: dict[str, str], info: ObjectInfo
) -> DirtyRecord | None:
    """COS holds the upload of layer ``i``: it and the layers below are committed."""
    layer = rec.layers[i]
    written = info.metadata.get(META_SIZE)
    if info.size != layer.size or (written is not None and written != str(layer.size)):
        raise BaseMismatchError(
            f"{rec.key!r} in COS carries the envelope of the upload the crash cut off "
            f"but is {info.size} bytes (written with {written}), not {layer.size}"
        )
    if i == 0:
        meta = {**info.metadata, **env, **rec.attrs, META_SIZE: str(layer.size)}
        meta = await _tagged(ctx, rec.key, info, env, meta)
        etag = info.etag
        if meta != dict(info.metadata):
            # A streamed upload completed without its final metadata copy,
            # or the attributes changed after it was sealed.
            etag = await ctx.store.copy(
                rec.key,
                rec.key,
                metadata=meta,
                content_type=rec.content_type or FILE_CONTENT_TYPE,
                headers=info.headers,
                if_match=info.etag,
                size=info.size,
            )
        if rec.upload_id:
            try:
                await ctx.store.abort_multipart(rec.key, rec.upload_id)
            except CosEncFsError as exc:  # an orphan upload is aborted later anyway
                log.warning("could not abort the upload of %r: %s", rec.key, exc)
        ctx.journal.put_attrs(rec.key, etag, layer.size, None, meta)
        ctx.journal.delete_dirty(rec.fid)
        log.info("%r was in COS already: its upload completed before the crash", rec.key)
        return None
    new = DirtyRecord(
        fid=rec.fid,
        key=rec.key,
        vid=rec.vid,
        size=rec.size,
        attrs=rec.attrs,
        content_type=rec.content_type,
        source=SourceRecord(rec.key, info.etag, dict(env), layer.size),
        upload_id=rec.upload_id,
        parts=rec.parts,
        format=rec.format,
        layers=rec.layers[:i],
        object_envelope=rec.object_envelope,
    )
    ctx.journal.put_dirty(new)
    log.info(
        "%r: the upload of an older layer completed before the crash; "
        "the %d newer ones are rebased onto it",
        rec.key,
        i,
    )
    return new
