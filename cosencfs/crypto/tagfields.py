"""Tag fields in object metadata: placement, sealing, opening, re-tagging (format.md, 12.7-12.8)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from cosencfs.crypto.chunktags import ChunkTags, chunk_count
from cosencfs.crypto.objecttags import (
    AttrSet,
    TagKey,
    VerifiedContent,
    attribute_tag,
    object_tag_of_digest,
    seal_object,
    sealed_envelope,
    verify_object,
)
from cosencfs.crypto.tagcodec import (
    _META_PREFIX_BYTES,
    ATTR_TAG_FIELD,
    CHUNKS_FIELD,
    DIGEST_SIZE,
    INLINE_BUDGET,
    INLINE_CHUNKS_MAX,
    OBJECT_TAG_FIELD,
    TAG_FIELDS,
    TAG_SIZE,
    TAGS_REF_FIELD,
    Buffer,
    b64url_decode,
    b64url_encode,
    metadata_bytes,
)
from cosencfs.errors import IntegrityError

# --------------------------------------------------------------------------
# Metadata: placement, sealing, opening


class Placement(Enum):
    """Where an object's chunk tags live."""

    NONE = "none"  # an empty object: no chunks
    INLINE = "inline"  # the cosencfs-chunks field
    COMPANION = "companion"  # a companion object, named by cosencfs-tags-ref


def _field_bytes(name: str, value_len: int) -> int:
    return _META_PREFIX_BYTES + len(name) + value_len


def _b64_len(n: int) -> int:
    return -(-n * 4 // 3)


def tag_fields_bytes(placement: Placement, n_chunks: int) -> int:
    """Metadata bytes the tag fields take for ``placement`` with ``n_chunks`` chunks."""
    fixed = _field_bytes(OBJECT_TAG_FIELD, _b64_len(TAG_SIZE)) + _field_bytes(
        ATTR_TAG_FIELD, _b64_len(TAG_SIZE)
    )
    if placement is Placement.INLINE:
        return fixed + _field_bytes(CHUNKS_FIELD, _b64_len(n_chunks * TAG_SIZE))
    if placement is Placement.COMPANION:
        return fixed + _field_bytes(TAGS_REF_FIELD, _b64_len(DIGEST_SIZE))
    return fixed


def place_chunk_tags(n_chunks: int, other_bytes: int) -> Placement:
    """Inline or companion, given the size of all other metadata (:func:`metadata_bytes`).

    Inline while ``n_chunks <= INLINE_CHUNKS_MAX`` and the whole metadata,
    tags included, stays within ``INLINE_BUDGET``; else a companion.
    """
    if n_chunks == 0:
        return Placement.NONE
    inline = other_bytes + tag_fields_bytes(Placement.INLINE, n_chunks)
    if n_chunks <= INLINE_CHUNKS_MAX and inline <= INLINE_BUDGET:
        return Placement.INLINE
    return Placement.COMPANION


@dataclass(slots=True, frozen=True, repr=False)
class SealedTags:
    """What :func:`seal_tags` produces: metadata fields, and the companion body if any.

    ``content`` is the sealed object's verified content (:func:`seal_object`):
    what a reader of the object checks its chunks against, without opening
    the tags just made.
    """

    fields: dict[str, str]
    companion: bytes | None
    placement: Placement
    content: VerifiedContent

    def __repr__(self) -> str:
        return f"SealedTags(placement={self.placement.value}, fields={sorted(self.fields)})"


def _lower(metadata: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in metadata.items()}


def seal_tags(
    tk: TagKey,
    *,
    key: str,
    size: int,
    metadata: Mapping[str, str],
    chunk_tags: ChunkTags,
    attrs: AttrSet,
) -> SealedTags:
    """The tag fields for an object whose other metadata is ``metadata``.

    ``metadata`` holds the envelope (``EnvelopeCodec.seal``), the attribute
    fields and anything else the object will carry; any tag fields in it are
    ignored.  The result's fields are to be merged into it; when
    ``companion`` is not None it must be stored (before the object) under
    the companion's reserved name.
    """
    m = _lower(metadata)
    other = {k: v for k, v in m.items() if k not in TAG_FIELDS}
    envelope = sealed_envelope(other, key=key)
    content = seal_object(tk, key=key, size=size, envelope=envelope, chunk_tags=chunk_tags)
    otag = content.object_tag
    atag = attribute_tag(tk, key=key, object_tag=otag, attrs=attrs)
    placement = place_chunk_tags(len(chunk_tags), metadata_bytes(other))
    fields = {OBJECT_TAG_FIELD: b64url_encode(otag), ATTR_TAG_FIELD: b64url_encode(atag)}
    companion = None
    if placement is Placement.INLINE:
        fields[CHUNKS_FIELD] = chunk_tags.inline_value()
    elif placement is Placement.COMPANION:
        companion = chunk_tags.companion_body()
        fields[TAGS_REF_FIELD] = b64url_encode(chunk_tags.digest())
    return SealedTags(fields, companion, placement, content)


def has_tags(metadata: Mapping[str, str]) -> bool:
    """Whether the object carries any tag field (policy on untagged objects is the caller's)."""
    return any(k.lower() in TAG_FIELDS for k in metadata)


def companion_digest(metadata: Mapping[str, str], *, key: str = "") -> bytes | None:
    """The digest from ``cosencfs-tags-ref``, or None when the tags are inline (or none)."""
    text = _lower(metadata).get(TAGS_REF_FIELD)
    if text is None:
        return None
    digest = b64url_decode(text)
    if digest is None or len(digest) != DIGEST_SIZE:
        raise IntegrityError(f"{TAGS_REF_FIELD} is malformed", key=key)
    return digest


def open_tags(
    tk: TagKey,
    *,
    key: str,
    size: int,
    metadata: Mapping[str, str],
    companion: Buffer | None = None,
) -> VerifiedContent:
    """Verify an object's tags against its metadata; IntegrityError when they fail.

    ``size`` is the body length the store reports (Content-Length), not a
    metadata field.  ``companion`` is the companion object's body, needed
    when :func:`companion_digest` is not None.  The caller decides what an
    untagged object means (:func:`has_tags`); here it is a failure.
    """
    m = _lower(metadata)
    text = m.get(OBJECT_TAG_FIELD)
    if text is None:
        raise IntegrityError(f"untagged object: {OBJECT_TAG_FIELD} missing", key=key)
    tag = b64url_decode(text)
    if tag is None or len(tag) != TAG_SIZE:
        raise IntegrityError(f"{OBJECT_TAG_FIELD} is malformed", key=key)
    envelope = sealed_envelope(m, key=key)
    digest = companion_digest(m, key=key)
    inline = m.get(CHUNKS_FIELD)
    if digest is not None and inline is not None:
        raise IntegrityError(f"both {CHUNKS_FIELD} and {TAGS_REF_FIELD} present", key=key)
    if digest is not None:
        if companion is None:
            raise IntegrityError("the companion object holding the chunk tags is missing", key=key)
        chunk_tags = ChunkTags.from_companion(companion, digest, key=key)
    elif inline is not None:
        chunk_tags = ChunkTags.from_inline(inline, key=key)
    else:
        chunk_tags = ChunkTags([])
    return verify_object(tk, key=key, size=size, envelope=envelope, chunk_tags=chunk_tags, tag=tag)


def retag(
    tk: TagKey,
    verified: VerifiedContent,
    *,
    key: str,
    metadata: Mapping[str, str],
    attrs: AttrSet,
) -> SealedTags:
    """Tags for the same content under a new name or a new envelope, without the body.

    A rename (server-side copy to ``key``) passes the old metadata; a rekey
    passes the re-wrapped envelope (same data key, so the chunk tags hold).
    Only verified chunk tags are re-tagged: never launder altered ones.
    """
    return seal_tags(
        tk,
        key=key,
        size=verified.size,
        metadata=metadata,
        chunk_tags=verified.chunk_tags,
        attrs=attrs,
    )


def _content_digest(m: Mapping[str, str], size: int, key: str) -> bytes:
    """D of an object from its metadata alone: the ref, or the inline tags hashed."""
    digest = companion_digest(m, key=key)
    inline = m.get(CHUNKS_FIELD)
    if digest is not None and inline is not None:
        raise IntegrityError(f"both {CHUNKS_FIELD} and {TAGS_REF_FIELD} present", key=key)
    if digest is not None:
        return digest
    chunk_tags = ChunkTags.from_inline(inline, key=key) if inline is not None else ChunkTags([])
    if len(chunk_tags) != chunk_count(size):
        raise IntegrityError(
            f"{len(chunk_tags)} chunk tags for {size} bytes: body truncated, extended "
            "or tags altered",
            key=key,
        )
    return chunk_tags.digest()


def retag_fields(
    old_tk: TagKey,
    new_tk: TagKey,
    *,
    old_key: str,
    new_key: str,
    size: int,
    old_metadata: Mapping[str, str],
    new_metadata: Mapping[str, str],
    attrs: AttrSet,
) -> dict[str, str]:
    """New object and attribute tags for the same body under a new name or envelope.

    A rename passes the new key (same envelope, same tag key); a rekey the
    re-wrapped envelope in ``new_metadata`` and the new master's tag key.
    The old object tag is verified first, from metadata only (D is the
    companion reference or the hash of the inline tags): no body byte and
    no companion is read, and tags are never re-issued for an object whose
    own tag does not verify.  The chunk tag fields stay as they are.
    """
    m = _lower(old_metadata)
    text = m.get(OBJECT_TAG_FIELD)
    tag = None if text is None else b64url_decode(text)
    if tag is None or len(tag) != TAG_SIZE:
        raise IntegrityError(f"{OBJECT_TAG_FIELD} missing or malformed", key=old_key)
    digest = _content_digest(m, size, old_key)
    old_env = sealed_envelope(m, key=old_key)
    expected = object_tag_of_digest(old_tk, key=old_key, size=size, envelope=old_env, digest=digest)
    if not hmac.compare_digest(expected, tag):
        raise IntegrityError(
            "object tag does not verify (body size, name, envelope or chunk tags altered)",
            key=old_key,
        )
    new_env = sealed_envelope(_lower(new_metadata), key=new_key)
    otag = object_tag_of_digest(new_tk, key=new_key, size=size, envelope=new_env, digest=digest)
    atag = attribute_tag(new_tk, key=new_key, object_tag=otag, attrs=attrs)
    return {OBJECT_TAG_FIELD: b64url_encode(otag), ATTR_TAG_FIELD: b64url_encode(atag)}
