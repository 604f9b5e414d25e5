"""Integrity tags: tamper detection for objects the COS SDK must still read.

The body stays exactly the SDK's AES-256-CTR; authentication lives in extra
``cosencfs-*`` metadata fields (which the SDK ignores) and, for large files,
in a companion object holding the chunk tags.  docs/format.md, section 12,
is the specification (keys, labels, encodings byte by byte, budget, security
argument).  This module is the one import for users of the construction; it
lives in four modules:

- ``tagcodec``: constants, field names, encodings;
- ``chunktags``: one 16-byte HMAC-SHA256 per 64 KiB chunk of *ciphertext*,
  under a per-object chunk key from the object's data key and IV, so a ranged
  read verifies what it fetched before decrypting it, and a rekey or a rename
  (same data key) keeps them;
- ``objecttags``: the object tag (HMAC-SHA256 under the tag key, derived from
  the secret master material only, of the object key, the plaintext size,
  the chunk size, the envelope and the digest of the chunk tags) and the
  attribute tag (object key, object tag, mode, uid, gid, mtime, rdev,
  xattrs), and :class:`VerifiedContent`;
- ``tagfields``: where the tags go in metadata (inline or companion),
  sealing, opening, re-tagging.

Verification goes top-down: :func:`open_tags` checks the object tag and
returns a :class:`VerifiedContent`, the only source of chunk tags a reader
may check chunks against.  Failures raise
:class:`~cosencfs.errors.IntegrityError` naming the object key and the
chunk, never key material.  Comparisons are constant-time.
"""

from __future__ import annotations

from cosencfs.crypto.chunktags import (
    ChunkKey,
    ChunkTagger,
    ChunkTags,
    chunk_count,
    chunk_length,
    chunk_tag,
    covering_chunks,
    tag_body,
)
from cosencfs.crypto.objecttags import (
    AttrSet,
    TagKey,
    VerifiedContent,
    attribute_tag,
    object_tag,
    object_tag_of_digest,
    seal_object,
    sealed_envelope,
    verify_attributes,
    verify_object,
)
from cosencfs.crypto.tagcodec import (
    ATTR_RESERVE,
    ATTR_TAG_FIELD,
    CEK_ALG,
    CHUNK_SIZE,
    CHUNKS_FIELD,
    COMPANION_HEADER_SIZE,
    COMPANION_MAGIC,
    CONTENT_TAG_FIELDS,
    DIGEST_SIZE,
    INLINE_BUDGET,
    INLINE_CHUNKS_MAX,
    INTEGRITY_VERSION,
    METADATA_LIMIT,
    OBJECT_TAG_FIELD,
    TAG_FIELDS,
    TAG_SIZE,
    TAGS_REF_FIELD,
    b64url_decode,
    b64url_encode,
    metadata_bytes,
)
from cosencfs.crypto.tagfields import (
    Placement,
    SealedTags,
    companion_digest,
    has_tags,
    open_tags,
    place_chunk_tags,
    retag,
    retag_fields,
    seal_tags,
    tag_fields_bytes,
)

__all__ = [
    "ATTR_RESERVE",
    "ATTR_TAG_FIELD",
    "CEK_ALG",
    "CHUNKS_FIELD",
    "CHUNK_SIZE",
    "COMPANION_HEADER_SIZE",
    "COMPANION_MAGIC",
    "CONTENT_TAG_FIELDS",
    "DIGEST_SIZE",
    "INLINE_BUDGET",
    "INLINE_CHUNKS_MAX",
    "INTEGRITY_VERSION",
    "METADATA_LIMIT",
    "OBJECT_TAG_FIELD",
    "TAGS_REF_FIELD",
    "TAG_FIELDS",
    "TAG_SIZE",
    "AttrSet",
    "ChunkKey",
    "ChunkTagger",
    "ChunkTags",
    "Placement",
    "SealedTags",
    "TagKey",
    "VerifiedContent",
    "attribute_tag",
    "b64url_decode",
    "b64url_encode",
    "chunk_count",
    "chunk_length",
    "chunk_tag",
    "companion_digest",
    "covering_chunks",
    "has_tags",
    "metadata_bytes",
    "object_tag",
    "object_tag_of_digest",
    "open_tags",
    "place_chunk_tags",
    "retag",
    "retag_fields",
    "seal_object",
    "seal_tags",
    "sealed_envelope",
    "tag_body",
    "tag_fields_bytes",
    "verify_attributes",
    "verify_object",
]
