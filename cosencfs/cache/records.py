"""The journal's records: dirty files, their layers, cached attributes, and their rows.

What the ``dirty`` table of cosencfs/cache/journal.py holds, as dataclasses,
and how each is written to and read from a row (JSON in text columns).  A
row names cache files only by ids ``valid_vid`` accepts: one naming anything
else was not written by cosencfs and is skipped (cosencfs/cache/layout.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cosencfs.cache.layout import accept_journal_vid


@dataclass(slots=True)
class SourceRecord:
    key: str
    etag: str
    envelope: dict[str, str]  # empty: a plaintext object
    limit: int


@dataclass(slots=True)
class LayerRecord:
    """One dirty layer: its log ``vid``, the first ``end`` bytes of it that count."""

    vid: str
    end: int
    #: The layer's cache key, wrapped (EnvelopeCodec.wrap_cache_key).
    key: str
    size: int
    limit: int
    #: No write can change it any more (sealed for upload, or frozen).
    sealed: bool = False
    #: Its direct copy: id, bytes that count, the envelope of its key, and
    #: whether that key was burned (see cache/dirtylog.py).
    direct_vid: str | None = None
    direct_end: int = 0
    direct_envelope: dict[str, str] | None = None
    burned: bool = False
    #: The envelope of the object this layer's upload makes (drawn when it was
    #: sealed for a commit); recovery recognises that upload in COS by it.
    envelope: dict[str, str] | None = None


#: Record formats: 1 = one cache file of ciphertext (releases before the
#: dirty-log cache), 2 = layers of AES-GCM record logs.
FORMAT_LEGACY = 1
FORMAT_LAYERS = 2


@dataclass(slots=True)
class DirtyRecord:
    fid: str
    key: str
    #: The newest layer's id (format 2), or the cache file (format 1).
    vid: str
    size: int
    attrs: dict[str, str]
    content_type: str = ""
    source: SourceRecord | None = None
    upload_id: str | None = None
    parts: dict[int, str] = field(default_factory=dict)
    format: int = FORMAT_LAYERS
    #: Format 2: the layers, newest first.
    layers: list[LayerRecord] = field(default_factory=list)
    #: Format 2: the envelope of the object being uploaded, once sealed.
    object_envelope: dict[str, str] | None = None
    #: Format 1: the cache file's present ranges and its wrapped data key.
    present: list[list[int]] = field(default_factory=list)
    envelope: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class AttrRecord:
    etag: str
    size: int
    lm: float | None
    meta: Mapping[str, str]

    def matches(self, etag: str, size: int, lm: float) -> bool:
        """Whether an object seen with these values is the one recorded.

        Listings give Last-Modified in milliseconds, HEAD in seconds: allow
        one second.  A metadata-only change (server-side copy) keeps the ETag
        but moves Last-Modified, so it is caught.
        """
        if self.etag != etag or self.size != size:
            return False
        return self.lm is None or abs(self.lm - lm) < 1.0


def parts_json(parts: Mapping[int, str]) -> str:
    """A multipart upload's part ETags, by part number, as a column."""
    return json.dumps({str(k): v for k, v in parts.items()})


def dirty_row(rec: DirtyRecord, updated: float) -> tuple[object, ...]:
    """The ``dirty`` columns of ``rec`` (in the order of journal.py's INSERT)."""
    source = None
    if rec.source is not None:
        source = json.dumps(
            {
                "key": rec.source.key,
                "etag": rec.source.etag,
                "envelope": rec.source.envelope,
                "limit": rec.source.limit,
            }
        )
    return (
        rec.fid,
        rec.key,
        rec.vid,
        rec.size,
        json.dumps(rec.present),
        json.dumps(rec.envelope),
        json.dumps(rec.attrs),
        rec.content_type,
        source,
        rec.upload_id,
        parts_json(rec.parts),
        updated,
        rec.format,
        json.dumps([_layer_json(x) for x in rec.layers]),
        None if rec.object_envelope is None else json.dumps(rec.object_envelope),
    )


def parse_dirty(row: Sequence[object]) -> DirtyRecord | None:
    """One ``dirty`` row as a record; None when a named cache file is not one of ours."""
    rid, key, vid, size, present, envelope, attrs, ctype, source, upload_id, parts = row[:11]
    fmt, layers, obj_env = row[11:14]
    if not accept_journal_vid(vid, rid):
        return None
    layer_list = json.loads(str(layers or "[]"))
    if not all(accept_journal_vid(x.get("vid"), rid) for x in layer_list):
        return None
    directs = [x["direct_vid"] for x in layer_list if x.get("direct_vid") is not None]
    if not all(accept_journal_vid(d, rid) for d in directs):
        return None
    src = None
    if source:
        s = json.loads(str(source))
        src = SourceRecord(str(s["key"]), str(s["etag"]), dict(s["envelope"]), int(s["limit"]))
    envelope_obj = None if obj_env is None else dict(json.loads(str(obj_env)))
    return DirtyRecord(
        fid=str(rid),
        key=str(key),
        vid=str(vid),
        size=int(str(size)),
        present=list(json.loads(str(present))),
        envelope=dict(json.loads(str(envelope))),
        attrs=dict(json.loads(str(attrs))),
        content_type=str(ctype),
        source=src,
        upload_id=None if upload_id is None else str(upload_id),
        parts={int(k): str(v) for k, v in json.loads(str(parts or "{}")).items()},
        format=int(str(fmt)),
        layers=[_layer_from_json(x) for x in layer_list],
        object_envelope=envelope_obj,
    )


def _layer_json(x: LayerRecord) -> dict[str, object]:
    out: dict[str, object] = {
        "vid": x.vid,
        "end": x.end,
        "key": x.key,
        "size": x.size,
        "limit": x.limit,
        "sealed": x.sealed,
    }
    if x.envelope is not None:
        out["envelope"] = x.envelope
    if x.direct_vid is not None:
        out.update(
            direct_vid=x.direct_vid,
            direct_end=x.direct_end,
            direct_envelope=x.direct_envelope,
            burned=x.burned,
        )
    return out


def _layer_from_json(x: dict[str, object]) -> LayerRecord:
    direct_vid = x.get("direct_vid")
    env = x.get("direct_envelope")
    own = x.get("envelope")
    return LayerRecord(
        vid=str(x["vid"]),
        end=int(str(x["end"])),
        key=str(x["key"]),
        size=int(str(x["size"])),
        limit=int(str(x["limit"])),
        sealed=bool(x.get("sealed", False)),
        direct_vid=None if direct_vid is None else str(direct_vid),
        direct_end=int(str(x.get("direct_end", 0))),
        direct_envelope=None if env is None else {str(k): str(v) for k, v in dict(env).items()},  # type: ignore[call-overload]
        burned=bool(x.get("burned", False)),
        envelope=None if own is None else {str(k): str(v) for k, v in dict(own).items()},  # type: ignore[call-overload]
    )


#: Object tags of older versions remembered per key (rollback refusal).
TAGS_REMEMBERED = 32


@dataclass(slots=True, frozen=True)
class TagMemory:
    """The object tags (base64url) this mount wrote or verified at one key.

    ``current`` is the newest version's (None: the key holds nothing this
    mount knows tagged, e.g. after its own unlink); ``older`` the versions it
    replaced, newest first, at most ``TAGS_REMEMBERED``.
    """

    current: str | None
    older: tuple[str, ...]

    def seen(self, tag: str) -> TagMemory:
        """After writing or verifying the version whose object tag is ``tag``."""
        if tag == self.current:
            return self
        older = tuple(t for t in (self.current, *self.older) if t is not None and t != tag)
        return TagMemory(tag, older[:TAGS_REMEMBERED])

    def gone(self) -> TagMemory:
        """After this mount removed the object: untagged objects there are fine again."""
        older = (self.current, *self.older) if self.current is not None else self.older
        return TagMemory(None, older[:TAGS_REMEMBERED])
