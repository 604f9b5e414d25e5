"""Extended attributes sealed with AES-256-GCM under a key of the master (format.md, 13).

All of an object's ``user.*`` attributes, names and values, go into one
metadata field, ``x-cos-meta-cosencfs-xattrs``:

    field     = base64url( 01 || nonce (12) || AES-256-GCM(Kx, nonce, plaintext, aad) )
    plaintext = u32(m) || (lp(name) || lp(value)) * m     (names sorted by bytes)
    aad       = 01 || lp("cosencfs xattrs") || lp(object key, UTF-8)
    Kx        = HKDF-SHA256(IKM = K, salt = none, info = "cosencfs xattr key v1", L = 32)

``K`` is the tag key (format.md 12.1): HKDF of the secret master material
only, never of a public key or a data key.  Every seal draws a fresh random
96-bit nonce (``os.urandom``); a key sees one seal per attribute write of
the mount, far below the 2^32 seals at which random GCM nonces start to
risk a collision.  The AAD binds the object key, so a blob moved to another
object does not open; a rename re-seals under the new key in the same
server-side copy that moves the object.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cosencfs.crypto.ctr import RecordTagError, open_record, seal_record
from cosencfs.crypto.objecttags import TagKey
from cosencfs.crypto.tagcodec import _lp, _u32, b64url_decode, b64url_encode
from cosencfs.errors import IntegrityError

#: The metadata field (``x-cos-meta-`` + this) holding the sealed attributes.
XATTR_FIELD = "cosencfs-xattrs"
XATTR_VERSION = 1
NONCE_SIZE = 12
GCM_TAG_SIZE = 16
_KEY_INFO = b"cosencfs xattr key v1"
_AAD_LABEL = b"cosencfs xattrs"

Xattrs = Mapping[bytes, bytes]


class XattrKey:
    """``Kx``: the AEAD key of extended attributes, derived from a tag key.

    ``repr`` never shows the key.
    """

    __slots__ = ("_key",)

    def __init__(self, tag_key: TagKey) -> None:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO)
        self._key = hkdf.derive(tag_key._key)

    def __repr__(self) -> str:
        return "XattrKey(<secret>)"

    __str__ = __repr__

    def seal(self, key: str, xattrs: Xattrs) -> str:
        """The field value for ``xattrs`` on the object at ``key`` (a fresh nonce)."""
        # seal_record (crypto/ctr.py, the one cipher builder): a fresh random nonce.
        record = seal_record(self._key, encode(xattrs), _aad(key))
        return b64url_encode(bytes([XATTR_VERSION]) + record)

    def open(self, key: str, text: str) -> dict[bytes, bytes]:
        """The attributes in field value ``text`` of the object at ``key``.

        IntegrityError when the field is malformed, altered, sealed for
        another object, or under another key.
        """
        raw = b64url_decode(text)
        if raw is None or len(raw) < 1 + NONCE_SIZE + GCM_TAG_SIZE or raw[0] != XATTR_VERSION:
            raise IntegrityError(f"{XATTR_FIELD} is malformed", key=key)
        try:
            plain = open_record(self._key, raw[1:], _aad(key))
        except RecordTagError:
            raise IntegrityError(
                f"{XATTR_FIELD} does not open (altered, another object's, or another key)",
                key=key,
            ) from None
        return decode(plain, key=key)


def open_any(keys: Iterable[XattrKey], key: str, text: str) -> dict[bytes, bytes]:
    """:meth:`XattrKey.open` under the first of ``keys`` that opens it.

    The field does not name its master key (a directory marker has no
    envelope to name one), so every key the mount holds is tried, as for a
    marker's attribute tag.
    """
    error: IntegrityError | None = None
    for xk in keys:
        try:
            return xk.open(key, text)
        except IntegrityError as exc:
            error = exc
    raise error or IntegrityError("no key to open extended attributes with", key=key)


def _aad(key: str) -> bytes:
    return bytes([XATTR_VERSION]) + _lp(_AAD_LABEL) + _lp(key.encode("utf-8"))


def encode(xattrs: Xattrs) -> bytes:
    items = sorted((bytes(k), bytes(v)) for k, v in xattrs.items())
    return _u32(len(items)) + b"".join(_lp(k) + _lp(v) for k, v in items)


def decode(plain: bytes, *, key: str = "") -> dict[bytes, bytes]:
    """The inverse of :func:`encode`; IntegrityError on a malformed encoding."""

    def u32(pos: int) -> int:
        if pos + 4 > len(plain):
            raise IntegrityError(f"{XATTR_FIELD}: truncated encoding", key=key)
        return int.from_bytes(plain[pos : pos + 4], "big")

    count, pos = u32(0), 4
    out: dict[bytes, bytes] = {}
    for _ in range(count):
        parts = []
        for _ in range(2):
            n = u32(pos)
            pos += 4
            if pos + n > len(plain):
                raise IntegrityError(f"{XATTR_FIELD}: truncated encoding", key=key)
            parts.append(plain[pos : pos + n])
            pos += n
        out[parts[0]] = parts[1]
    if pos != len(plain) or len(out) != count:
        raise IntegrityError(f"{XATTR_FIELD}: malformed encoding", key=key)
    return out


def sealed_length(xattrs: Xattrs) -> int:
    """Characters of the field value :meth:`XattrKey.seal` gives for ``xattrs``."""
    raw = 1 + NONCE_SIZE + len(encode(xattrs)) + GCM_TAG_SIZE
    return -(-raw * 4 // 3)
