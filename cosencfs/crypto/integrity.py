"""Integrity tags: tamper detection for objects the COS SDK must still read.

The body stays exactly the SDK's AES-256-CTR; authentication lives in extra
``cosencfs-*`` metadata fields (which the SDK ignores) and, for large files,
in a companion object holding the chunk tags.  docs/format.md, section 12,
is the specification (keys, labels, encodings byte by byte, budget, security
argument); this module is its one implementation.  The mount does not write
or check these tags yet: this is the construction only.

Three levels, each bound to the one above:

- **chunk tags**: one 16-byte HMAC-SHA256 per 64 KiB chunk of *ciphertext*,
  under a per-object chunk key derived from the object's data key and IV
  (:class:`ChunkKey`), so a ranged read verifies what it fetched before
  decrypting it, and a rekey or a rename (same data key) keeps them;
- **object tag**: HMAC-SHA256 under the tag key (:class:`TagKey`, derived
  from the secret master material only) of the object key, the plaintext
  size, the chunk size, the envelope and the digest of the chunk tags;
- **attribute tag**: HMAC-SHA256 under the tag key of the object key, the
  object tag and the attributes (mode, uid, gid, mtime, rdev, xattrs).

Verification goes top-down: :func:`open_tags` checks the object tag and
returns a :class:`VerifiedContent`, the only source of chunk tags a reader
may check chunks against (:meth:`VerifiedContent.verify_chunk`,
:meth:`VerifiedContent.verify_range`).  Failures raise
:class:`~cosencfs.errors.IntegrityError` naming the object key and the
chunk, never key material.  Comparisons are constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cosencfs.crypto.ctr import DataKey
from cosencfs.crypto.envelope import SealedEnvelope, sealed_envelope
from cosencfs.crypto.master import MasterKey
from cosencfs.crypto.wrapping import INTEGRITY_KEY_SIZE
from cosencfs.errors import IntegrityError, WrongKeyError

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
    "open_tags",
    "place_chunk_tags",
    "retag",
    "seal_tags",
    "tag_body",
    "tag_fields_bytes",
    "verify_attributes",
    "verify_object",
]

#: Version byte that starts every HMAC input and the companion body.
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


# --------------------------------------------------------------------------
# Chunks


def chunk_count(size: int) -> int:
    """Chunks of an object of ``size`` bytes: 0 for an empty object."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    return -(-size // CHUNK_SIZE)


def chunk_length(size: int, index: int) -> int:
    """Length of chunk ``index`` of an object of ``size`` bytes (the last may be short)."""
    n = chunk_count(size)
    if not 0 <= index < n:
        raise ValueError(f"chunk {index} out of range (object has {n})")
    return min(CHUNK_SIZE, size - index * CHUNK_SIZE)


def covering_chunks(offset: int, length: int, size: int) -> tuple[int, int, int]:
    """What a ranged read of ``[offset, offset+length)`` must fetch to verify it.

    Returns ``(first_chunk, start, end)``: fetch body bytes ``[start, end)``
    (whole chunks, the last one possibly the object's short tail), verify
    them with :meth:`VerifiedContent.verify_range` from ``first_chunk``.
    An empty or out-of-object request gives an empty span.
    """
    if offset < 0 or length < 0:
        raise ValueError("offset and length must be >= 0")
    end = min(offset + length, size)
    if offset >= end:
        return offset // CHUNK_SIZE, offset, offset
    first = offset // CHUNK_SIZE
    last = (end - 1) // CHUNK_SIZE
    return first, first * CHUNK_SIZE, min((last + 1) * CHUNK_SIZE, size)


class ChunkKey:
    """The per-object key of the chunk tags, derived from the data key and IV.

    ``K_c = HKDF-SHA256(ikm = data key, salt = IV, info = "cosencfs chunk key v1")``.
    A rename or a rekey keeps the data key, hence the chunk tags; two object
    versions never share a data key, hence never share chunk tags.  ``repr``
    never shows the key.
    """

    __slots__ = ("_base",)

    def __init__(self, dk: DataKey) -> None:
        key = HKDF(hashes.SHA256(), 32, salt=dk.iv, info=_CHUNK_KEY_INFO).derive(dk.key)
        base = crypto_hmac.HMAC(key, hashes.SHA256())
        base.update(_preamble(_CHUNK_LABEL))
        self._base = base

    def __repr__(self) -> str:
        return "ChunkKey(<secret>)"

    __str__ = __repr__

    def _start(self, index: int) -> crypto_hmac.HMAC:
        ctx = self._base.copy()
        ctx.update(_u64(index))
        return ctx


def _finish(ctx: crypto_hmac.HMAC, length: int) -> bytes:
    ctx.update(_u32(length))
    return ctx.finalize()[:TAG_SIZE]


def chunk_tag(ck: ChunkKey, index: int, ciphertext: Buffer) -> bytes:
    """``HMAC-SHA256(K_c, 0x01 || lp(label) || u64 index || ciphertext || u32 len)[:16]``."""
    if len(ciphertext) > CHUNK_SIZE:
        raise ValueError(f"a chunk holds at most {CHUNK_SIZE} bytes, got {len(ciphertext)}")
    ctx = ck._start(index)
    ctx.update(ciphertext)
    return _finish(ctx, len(ciphertext))


class ChunkTagger:
    """Chunk tags of ciphertext fed in pieces of any size, in order.

    For the uploader: feed each multipart part's ciphertext as it is
    produced; :meth:`finish` tags the short last chunk.  ``first_chunk``
    starts the count elsewhere, so parts that begin on a chunk boundary (every
    MiB-sized part does) can be tagged apart, in parallel, and the lists
    concatenated.  No piece is copied or buffered: the HMAC of the current
    chunk absorbs it directly.
    """

    __slots__ = ("_ck", "_ctx", "_done", "_filled", "_index", "_tags")

    def __init__(self, ck: ChunkKey, *, first_chunk: int = 0) -> None:
        if first_chunk < 0:
            raise ValueError("first_chunk must be >= 0")
        self._ck = ck
        self._index = first_chunk
        self._ctx: crypto_hmac.HMAC | None = None
        self._filled = 0
        self._tags: list[bytes] = []
        self._done = False

    def __repr__(self) -> str:
        return f"ChunkTagger(next_chunk={self._index}, tags={len(self._tags)})"

    def update(self, piece: Buffer) -> None:
        if self._done:
            raise ValueError("ChunkTagger.update after finish")
        view = memoryview(piece).cast("B")
        pos, n = 0, len(view)
        while pos < n:
            if self._ctx is None:
                self._ctx = self._ck._start(self._index)
            take = min(CHUNK_SIZE - self._filled, n - pos)
            self._ctx.update(view[pos : pos + take])
            pos += take
            self._filled += take
            if self._filled == CHUNK_SIZE:
                self._emit()

    def _emit(self) -> None:
        assert self._ctx is not None
        self._tags.append(_finish(self._ctx, self._filled))
        self._ctx = None
        self._filled = 0
        self._index += 1

    def finish(self) -> list[bytes]:
        """The tags of every chunk fed, the last one possibly short."""
        if not self._done:
            if self._ctx is not None:
                self._emit()
            self._done = True
        return list(self._tags)


def tag_body(ck: ChunkKey, ciphertext: Buffer) -> ChunkTags:
    """The chunk tags of a whole body (one shot)."""
    tagger = ChunkTagger(ck)
    tagger.update(ciphertext)
    return ChunkTags(tagger.finish())


@dataclass(slots=True, frozen=True, init=False, repr=False)
class ChunkTags:
    """An object's chunk tags, in order: what goes inline or into the companion."""

    tags: tuple[bytes, ...]

    def __init__(self, tags: Sequence[bytes]) -> None:
        tags = tuple(bytes(t) for t in tags)
        if any(len(t) != TAG_SIZE for t in tags):
            raise ValueError(f"every chunk tag is {TAG_SIZE} bytes")
        object.__setattr__(self, "tags", tags)

    def __repr__(self) -> str:
        return f"ChunkTags(count={len(self.tags)})"

    def __len__(self) -> int:
        return len(self.tags)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.tags)

    def __getitem__(self, index: int) -> bytes:
        return self.tags[index]

    def companion_body(self) -> bytes:
        """``"CEFT" || 0x01 || 000000 || u32 chunk size || u64 count || tags``."""
        header = (
            COMPANION_MAGIC
            + _u8(INTEGRITY_VERSION)
            + bytes(3)
            + _u32(CHUNK_SIZE)
            + _u64(len(self.tags))
        )
        return header + b"".join(self.tags)

    def digest(self) -> bytes:
        """SHA-256 of :meth:`companion_body`, bound into the object tag.

        The same value whether the tags sit inline or in a companion, so
        moving them between the two never changes the object tag.
        """
        return hashlib.sha256(self.companion_body()).digest()

    def inline_value(self) -> str:
        """The ``cosencfs-chunks`` metadata value: base64url of the tags, concatenated."""
        return b64url_encode(b"".join(self.tags))

    @classmethod
    def from_inline(cls, value: str, *, key: str = "") -> ChunkTags:
        raw = b64url_decode(value)
        if raw is None or len(raw) % TAG_SIZE:
            raise IntegrityError(f"{CHUNKS_FIELD} is malformed", key=key)
        return cls([raw[i : i + TAG_SIZE] for i in range(0, len(raw), TAG_SIZE)])

    @classmethod
    def from_companion(cls, body: Buffer, digest: bytes, *, key: str = "") -> ChunkTags:
        """Parse a companion body after checking it against ``digest`` (from the tags ref).

        The digest alone does not make the tags genuine (an attacker can
        rewrite ref and companion together); :func:`open_tags` does, through
        the object tag.  Checking it first gives a precise message.
        """
        body = bytes(body)
        if not hmac.compare_digest(hashlib.sha256(body).digest(), digest):
            raise IntegrityError(
                "the companion object does not match the digest in "
                f"{TAGS_REF_FIELD} (replaced or damaged)",
                key=key,
            )
        if len(body) < COMPANION_HEADER_SIZE or body[:4] != COMPANION_MAGIC:
            raise IntegrityError("the companion object is not a chunk tag list", key=key)
        if body[4] != INTEGRITY_VERSION or body[5:8] != bytes(3):
            raise IntegrityError(f"the companion object has unsupported version {body[4]}", key=key)
        chunk_size = int.from_bytes(body[8:12], "big")
        count = int.from_bytes(body[12:20], "big")
        if chunk_size != CHUNK_SIZE or len(body) != COMPANION_HEADER_SIZE + count * TAG_SIZE:
            raise IntegrityError("the companion object's header does not fit its size", key=key)
        tags = body[COMPANION_HEADER_SIZE:]
        return cls([tags[i : i + TAG_SIZE] for i in range(0, len(tags), TAG_SIZE)])


# --------------------------------------------------------------------------
# Object and attribute tags


class TagKey:
    """The key of object and attribute tags, from the secret master material only.

    ``TagKey.from_master(m)`` calls ``m.integrity_key()`` (CryptoError for a
    public-only RSA key).  ``repr`` never shows the key.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != INTEGRITY_KEY_SIZE:
            raise ValueError(f"a tag key is {INTEGRITY_KEY_SIZE} bytes")
        self._key = bytes(key)

    @classmethod
    def from_master(cls, master: MasterKey) -> TagKey:
        return cls(master.integrity_key())

    @classmethod
    def for_object(
        cls, metadata: Mapping[str, str], masters: Iterable[MasterKey], *, key: str = ""
    ) -> TagKey:
        """The tag key of the master named by the object's ``cosencfs-kid``.

        An object's tags are always under the tag key of the master key that
        wrapped its envelope (during a rotation a mount holds several), so a
        rename re-tags under that key, and a rekey under the new one.
        Raises WrongKeyError when no master has that id.
        """
        kid = sealed_envelope(metadata, key=key).key_id
        for master in masters:
            if master.key_id == kid:
                return cls.from_master(master)
        raise WrongKeyError(
            f"the object's tags are under master key id {kid}, which this mount does not have",
            key=key,
        )

    def __repr__(self) -> str:
        return "TagKey(<secret>)"

    __str__ = __repr__

    def _mac(self, message: bytes) -> bytes:
        ctx = crypto_hmac.HMAC(self._key, hashes.SHA256())
        ctx.update(message)
        return ctx.finalize()[:TAG_SIZE]


def _envelope_encoding(env: SealedEnvelope) -> bytes:
    return b"".join(
        _lp(x)
        for x in (
            CEK_ALG.encode("ascii"),
            env.version.encode("ascii"),
            env.wrap.value.encode("ascii"),
            env.key_id.encode("ascii"),
            env.wrapped_key,
            env.wrapped_iv,
            env.kcv,
        )
    )


def object_tag(
    tk: TagKey, *, key: str, size: int, envelope: SealedEnvelope, chunk_tags: ChunkTags
) -> bytes:
    """The 16-byte object tag (docs/format.md, section 12.4)."""
    if len(chunk_tags) != chunk_count(size):
        raise ValueError(
            f"{len(chunk_tags)} chunk tags for a {size}-byte object ({chunk_count(size)} chunks)"
        )
    message = (
        _preamble(_OBJECT_LABEL)
        + _lp(key.encode("utf-8"))
        + _u64(size)
        + _u32(CHUNK_SIZE)
        + _envelope_encoding(envelope)
        + _lp(chunk_tags.digest())
    )
    return tk._mac(message)


@dataclass(slots=True, frozen=True)
class AttrSet:
    """The attributes an attribute tag covers.

    ``mtime_ns`` is nanoseconds since the epoch (negative before 1970);
    ``rdev`` is None for anything but a device node; ``xattrs`` maps names
    (UTF-8) to values.
    """

    mode: int
    uid: int
    gid: int
    mtime_ns: int
    rdev: int | None = None
    xattrs: Mapping[str, bytes] = field(default_factory=dict)

    def encode(self) -> bytes:
        """``u32 mode || u32 uid || u32 gid || i64 sec || u32 nsec || u8 has_rdev ||
        u64 rdev || u32 n || (lp(name) || lp(value)) * n`` (names sorted by bytes)."""
        sec, nsec = divmod(self.mtime_ns, _NS)
        items = sorted((k.encode("utf-8"), bytes(v)) for k, v in self.xattrs.items())
        out = [
            _u32(self.mode),
            _u32(self.uid),
            _u32(self.gid),
            _i64(sec),
            _u32(nsec),
            _u8(0 if self.rdev is None else 1),
            _u64(0 if self.rdev is None else self.rdev),
            _u32(len(items)),
        ]
        for name, value in items:
            out.append(_lp(name))
            out.append(_lp(value))
        return b"".join(out)


def attribute_tag(tk: TagKey, *, key: str, object_tag: bytes, attrs: AttrSet) -> bytes:
    """The 16-byte attribute tag (docs/format.md, section 12.5)."""
    message = _preamble(_ATTR_LABEL) + _lp(key.encode("utf-8")) + _lp(object_tag) + attrs.encode()
    return tk._mac(message)


def verify_attributes(
    tk: TagKey, *, key: str, object_tag: bytes, attrs: AttrSet, tag: bytes
) -> None:
    """IntegrityError unless ``tag`` is the attribute tag of ``attrs``.

    A failure means: serve the content (its own tag verified) with the
    mount's default attributes, and log it once.
    """
    expected = attribute_tag(tk, key=key, object_tag=object_tag, attrs=attrs)
    if not hmac.compare_digest(expected, tag):
        raise IntegrityError("attribute tag does not verify (attributes altered)", key=key)


# --------------------------------------------------------------------------
# Verified content


_VERIFIED = object()


class VerifiedContent:
    """An object whose object tag verified: the only chunk tags to check chunks against.

    Made by :func:`open_tags` (or :func:`verify_object`); not built directly.
    """

    __slots__ = ("chunk_tags", "key", "object_tag", "size")

    def __init__(
        self, token: object, *, key: str, size: int, object_tag: bytes, chunk_tags: ChunkTags
    ) -> None:
        if token is not _VERIFIED:
            raise TypeError("VerifiedContent comes from open_tags / verify_object only")
        self.key = key
        self.size = size
        self.object_tag = object_tag
        self.chunk_tags = chunk_tags

    def __repr__(self) -> str:
        return f"VerifiedContent(key={self.key!r}, size={self.size}, chunks={len(self.chunk_tags)})"

    def verify_chunk(self, ck: ChunkKey, index: int, ciphertext: Buffer) -> None:
        """IntegrityError unless ``ciphertext`` is chunk ``index``, whole and unaltered."""
        n = len(self.chunk_tags)
        if not 0 <= index < n:
            raise IntegrityError(f"chunk out of range (object has {n} chunks)", key=self.key)
        want = chunk_length(self.size, index)
        if len(ciphertext) != want:
            raise IntegrityError(
                f"chunk has {len(ciphertext)} bytes, expected {want}", key=self.key, chunk=index
            )
        if not hmac.compare_digest(chunk_tag(ck, index, ciphertext), self.chunk_tags[index]):
            raise IntegrityError(
                "chunk tag does not verify (body altered)", key=self.key, chunk=index
            )

    def verify_range(self, ck: ChunkKey, first_chunk: int, ciphertext: Buffer) -> None:
        """Verify consecutive chunks from ``first_chunk`` (see :func:`covering_chunks`)."""
        view = memoryview(ciphertext).cast("B")
        index, pos = first_chunk, 0
        while pos < len(view):
            if index >= len(self.chunk_tags):
                raise IntegrityError(
                    "range runs past the end of the object", key=self.key, chunk=index
                )
            n = chunk_length(self.size, index)
            self.verify_chunk(ck, index, view[pos : pos + n])
            pos += n
            index += 1

    def verify_attributes(self, tk: TagKey, attrs: AttrSet, metadata: Mapping[str, str]) -> None:
        """Check the ``cosencfs-atag`` field of ``metadata`` against ``attrs``."""
        m = {k.lower(): v for k, v in metadata.items()}
        text = m.get(ATTR_TAG_FIELD)
        tag = None if text is None else b64url_decode(text)
        if tag is None or len(tag) != TAG_SIZE:
            raise IntegrityError(f"{ATTR_TAG_FIELD} missing or malformed", key=self.key)
        verify_attributes(tk, key=self.key, object_tag=self.object_tag, attrs=attrs, tag=tag)


def verify_object(
    tk: TagKey,
    *,
    key: str,
    size: int,
    envelope: SealedEnvelope,
    chunk_tags: ChunkTags,
    tag: bytes,
) -> VerifiedContent:
    """IntegrityError unless ``tag`` is the object tag of these inputs."""
    if len(chunk_tags) != chunk_count(size):
        raise IntegrityError(
            f"{len(chunk_tags)} chunk tags for {size} bytes: body truncated, extended "
            "or tags altered",
            key=key,
        )
    expected = object_tag(tk, key=key, size=size, envelope=envelope, chunk_tags=chunk_tags)
    if not hmac.compare_digest(expected, tag):
        raise IntegrityError(
            "object tag does not verify (body size, name, envelope or chunk tags altered)",
            key=key,
        )
    return VerifiedContent(_VERIFIED, key=key, size=size, object_tag=tag, chunk_tags=chunk_tags)


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
    """What :func:`seal_tags` produces: metadata fields, and the companion body if any."""

    fields: dict[str, str]
    companion: bytes | None
    placement: Placement

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
    otag = object_tag(tk, key=key, size=size, envelope=envelope, chunk_tags=chunk_tags)
    atag = attribute_tag(tk, key=key, object_tag=otag, attrs=attrs)
    placement = place_chunk_tags(len(chunk_tags), metadata_bytes(other))
    fields = {OBJECT_TAG_FIELD: b64url_encode(otag), ATTR_TAG_FIELD: b64url_encode(atag)}
    companion = None
    if placement is Placement.INLINE:
        fields[CHUNKS_FIELD] = chunk_tags.inline_value()
    elif placement is Placement.COMPANION:
        companion = chunk_tags.companion_body()
        fields[TAGS_REF_FIELD] = b64url_encode(chunk_tags.digest())
    return SealedTags(fields, companion, placement)


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
