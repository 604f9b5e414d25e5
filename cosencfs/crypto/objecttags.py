"""Object and attribute tags under the tag key; verified content (format.md, 12.5-12.6, 12.9)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from cosencfs.crypto.chunktags import ChunkKey, ChunkTags, chunk_count, chunk_length, chunk_tag
from cosencfs.crypto.envelope import FORMAT_VERSION, ObjectFormat, _analyse
from cosencfs.crypto.master import MasterKey
from cosencfs.crypto.tagcodec import (
    _ATTR_LABEL,
    _NS,
    _OBJECT_LABEL,
    ATTR_TAG_FIELD,
    CEK_ALG,
    CHUNK_SIZE,
    TAG_SIZE,
    Buffer,
    _i64,
    _lp,
    _preamble,
    _u8,
    _u32,
    _u64,
    b64url_decode,
)
from cosencfs.crypto.wrapping import INTEGRITY_KEY_SIZE, WrapAlg
from cosencfs.errors import DamagedEnvelopeError, IntegrityError, WrongKeyError

# --------------------------------------------------------------------------
# Object and attribute tags


@dataclass(slots=True, frozen=True, repr=False)
class SealedEnvelope:
    """The parsed fields of a cosencfs envelope, as the integrity tags bind them.

    All of it is public (wrapped values, not keys); ``repr`` still leaves
    the wrapped values out, as messages never carry them.
    """

    version: str
    wrap: WrapAlg
    key_id: str
    wrapped_key: bytes
    wrapped_iv: bytes
    kcv: bytes

    def __repr__(self) -> str:
        return f"SealedEnvelope(wrap={self.wrap.value!r}, key_id={self.key_id!r})"


def sealed_envelope(metadata: Mapping[str, str], *, key: str = "") -> SealedEnvelope:
    """The fields of a cosencfs envelope (format ``COSENCFS``), decoded.

    Raises DamagedEnvelopeError for any other format: only envelopes that
    cosencfs writes carry integrity tags.  ``key`` names the object in errors.
    """
    a = _analyse(metadata)
    if a.format is not ObjectFormat.COSENCFS or a.wrap is None:
        reason = a.reason or f"a {a.format.value} object, not a cosencfs envelope"
        raise DamagedEnvelopeError(f"no cosencfs envelope: {reason}", key=key)
    return SealedEnvelope(FORMAT_VERSION, a.wrap, a.kid, a.wrapped_key, a.wrapped_iv, a.kcv)


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
    """The 16-byte object tag (docs/format.md, section 12.5)."""
    if len(chunk_tags) != chunk_count(size):
        raise ValueError(
            f"{len(chunk_tags)} chunk tags for a {size}-byte object ({chunk_count(size)} chunks)"
        )
    return object_tag_of_digest(
        tk, key=key, size=size, envelope=envelope, digest=chunk_tags.digest()
    )


def object_tag_of_digest(
    tk: TagKey, *, key: str, size: int, envelope: SealedEnvelope, digest: bytes
) -> bytes:
    """The object tag from the chunk tags' digest D alone (a rename, a rekey)."""
    message = (
        _preamble(_OBJECT_LABEL)
        + _lp(key.encode("utf-8"))
        + _u64(size)
        + _u32(CHUNK_SIZE)
        + _envelope_encoding(envelope)
        + _lp(digest)
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

    Made by :func:`open_tags` (or :func:`verify_object`) from tags read back,
    or by :func:`seal_object` for the writer's own tags; not built directly.
    """

    __slots__ = ("chunk_tags", "key", "object_tag", "size")

    def __init__(
        self, token: object, *, key: str, size: int, object_tag: bytes, chunk_tags: ChunkTags
    ) -> None:
        if token is not _VERIFIED:
            raise TypeError("VerifiedContent comes from open_tags, verify_object or seal_object")
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


def seal_object(
    tk: TagKey, *, key: str, size: int, envelope: SealedEnvelope, chunk_tags: ChunkTags
) -> VerifiedContent:
    """The object tag of content the caller is about to store, as its ``VerifiedContent``.

    For the writer only: ``chunk_tags`` must be the tags it computed itself
    from the ciphertext it produced under the object's data key (or tags
    that came out of a ``VerifiedContent``, as a rename re-tags them), never
    tags read from COS, a companion or the journal — those go through
    :func:`verify_object`.  The tag is made here, not read, so there is
    nothing to verify: checking it again (``open_tags`` on the metadata just
    sealed) would compute the same MAC over the same inputs.
    """
    otag = object_tag(tk, key=key, size=size, envelope=envelope, chunk_tags=chunk_tags)
    return VerifiedContent(_VERIFIED, key=key, size=size, object_tag=otag, chunk_tags=chunk_tags)


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
