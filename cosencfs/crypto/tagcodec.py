"""Integrity tags: constants, field names and the byte encodings (docs/format.md, 12.2)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

INTEGRITY_VERSION = 1
#: Chunk size: a power of two, so MiB-sized multipart parts hold whole chunks.
CHUNK_SIZE = 64 * 1024
#: Every tag (chunk, object, attribute): HMAC-SHA256 truncated to 128 bits.
TAG_SIZE = 16
#: The chunk-tag digest (SHA-256 of the companion encoding), untruncated.
DIGEST_SIZE = 32
#: The body cipher, bound into the object tag (the format has only this one).
CEK_ALG = "aes-256-ctr"

OBJECT_TAG_FIELD = "cosencfs-tag"
ATTR_TAG_FIELD = "cosencfs-atag"
CHUNKS_FIELD = "cosencfs-chunks"
TAGS_REF_FIELD = "cosencfs-tags-ref"
#: Fields that belong to the content: carry them over unchanged (like the
#: envelope) when only attributes change; a rename or rekey recomputes them.
CONTENT_TAG_FIELDS: frozenset[str] = frozenset({OBJECT_TAG_FIELD, CHUNKS_FIELD, TAGS_REF_FIELD})
TAG_FIELDS: frozenset[str] = CONTENT_TAG_FIELDS | {ATTR_TAG_FIELD}

#: COS's limit on user metadata (``x-cos-meta-`` + name + value, summed).
METADATA_LIMIT = 2048
#: Bytes kept free after inline chunk tags, so that attribute changes
#: (an mtime gaining nanoseconds, rdev, small xattrs) fit without moving them.
ATTR_RESERVE = 128
#: Inline chunk tags only while the whole metadata stays at or under this.
INLINE_BUDGET = METADATA_LIMIT - ATTR_RESERVE
#: At most this many chunk tags inline (2 MiB of file); more go to a companion.
INLINE_CHUNKS_MAX = 32

COMPANION_MAGIC = b"CEFT"
#: magic (4) + version (1) + zero (3) + chunk size (4) + count (8).
COMPANION_HEADER_SIZE = 20

_META_PREFIX_BYTES = len("x-cos-meta-")
_CHUNK_KEY_INFO = b"cosencfs chunk key v1"
_CHUNK_LABEL = b"cosencfs chunk tag"
_OBJECT_LABEL = b"cosencfs object tag"
_ATTR_LABEL = b"cosencfs attribute tag"
_U32 = 1 << 32
_U64 = 1 << 64
_I64 = 1 << 63
_NS = 1_000_000_000
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")

Buffer = bytes | bytearray | memoryview


# --------------------------------------------------------------------------
# Encodings


def _u8(v: int) -> bytes:
    return v.to_bytes(1, "big")


def _u32(v: int) -> bytes:
    if not 0 <= v < _U32:
        raise ValueError(f"{v} does not fit an unsigned 32-bit field")
    return v.to_bytes(4, "big")


def _u64(v: int) -> bytes:
    if not 0 <= v < _U64:
        raise ValueError(f"{v} does not fit an unsigned 64-bit field")
    return v.to_bytes(8, "big")


def _i64(v: int) -> bytes:
    if not -_I64 <= v < _I64:
        raise ValueError(f"{v} does not fit a signed 64-bit field")
    return v.to_bytes(8, "big", signed=True)


def _lp(data: bytes) -> bytes:
    """A length-prefixed field: u32 big-endian length, then the bytes."""
    return _u32(len(data)) + data


def _preamble(label: bytes) -> bytes:
    return _u8(INTEGRITY_VERSION) + _lp(label)


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 4648, section 5): the metadata value encoding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes | None:
    """The bytes of a canonical :func:`b64url_encode` output, else None."""
    text = text.strip()
    if not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Reject non-canonical spellings (stray low bits in the last character).
    return data if b64url_encode(data) == text else None


def metadata_bytes(metadata: Mapping[str, str]) -> int:
    """Size of user metadata as COS counts it: ``x-cos-meta-`` + name + value (UTF-8)."""
    return sum(
        _META_PREFIX_BYTES + len(k.encode("utf-8")) + len(v.encode("utf-8"))
        for k, v in metadata.items()
    )
