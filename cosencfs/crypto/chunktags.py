"""Chunk tags: a MAC per 64 KiB of ciphertext, keyed from the data key (format.md, 12.3-12.4)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cosencfs.crypto.ctr import DataKey
from cosencfs.crypto.tagcodec import (
    _CHUNK_KEY_INFO,
    _CHUNK_LABEL,
    CHUNK_SIZE,
    CHUNKS_FIELD,
    COMPANION_HEADER_SIZE,
    COMPANION_MAGIC,
    INTEGRITY_VERSION,
    TAG_SIZE,
    TAGS_REF_FIELD,
    Buffer,
    _preamble,
    _u8,
    _u32,
    _u64,
    b64url_decode,
    b64url_encode,
)
from cosencfs.errors import IntegrityError

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
        if self._ctx is None:
            raise RuntimeError("no chunk in progress")
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
