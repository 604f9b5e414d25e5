"""The per-object envelope: wrapped data key and IV in user metadata.

Metadata dicts here use lowercase names WITHOUT the ``x-cos-meta-`` prefix
(the store layer adds and strips it) and ``str`` values.  Names are matched
case-insensitively on input.

Fields (see docs/format.md for the full table):

``client-side-encryption-key`` / ``client-side-encryption-iv``
    base64 (standard alphabet, padded) of the wrapped data key / IV, exactly
    as ``qcloud_cos.crypto.MetaHandle.set_object_meta`` writes them.  The
    SDK reads nothing else.
``cosencfs-version``, ``cosencfs-wrap``, ``cosencfs-kid``, ``cosencfs-kcv``
    cosencfs additions the SDK ignores: format version ("1"), the wrap
    algorithm, the master key id and a key-check value of the data key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from cosencfs.crypto.ctr import DataKey
from cosencfs.crypto.master import MasterKey, WrapAlg, wrapped_lengths_plausible
from cosencfs.errors import (
    CryptoError,
    DamagedEnvelopeError,
    ForeignFormatError,
    NotEncryptedError,
    WrongKeyError,
)

__all__ = [
    "COSENCFS_FIELDS",
    "ENVELOPE_FIELDS",
    "FOREIGN_FIELDS",
    "FORMAT_VERSION",
    "IV_FIELD",
    "KCV_FIELD",
    "KEY_FIELD",
    "KID_FIELD",
    "SDK_FIELDS",
    "VERSION_FIELD",
    "WRAP_FIELD",
    "EnvelopeCodec",
    "EnvelopeInfo",
    "ObjectFormat",
    "classify",
    "extract_envelope",
    "inspect_envelope",
    "is_envelope_field",
    "key_check_value",
    "strip_envelope",
]

KEY_FIELD = "client-side-encryption-key"
IV_FIELD = "client-side-encryption-iv"
VERSION_FIELD = "cosencfs-version"
WRAP_FIELD = "cosencfs-wrap"
KID_FIELD = "cosencfs-kid"
KCV_FIELD = "cosencfs-kcv"

FORMAT_VERSION = "1"

_FOREIGN_PREFIX = "client-side-encryption-"

SDK_FIELDS: frozenset[str] = frozenset({KEY_FIELD, IV_FIELD})
COSENCFS_FIELDS: frozenset[str] = frozenset({VERSION_FIELD, WRAP_FIELD, KID_FIELD, KCV_FIELD})

#: Envelope names written by the COS Java and Go SDKs (after the store has
#: stripped ``x-cos-meta-``).  Any other ``client-side-encryption-*`` name
#: is treated as foreign too (see :func:`is_envelope_field`).
FOREIGN_FIELDS: frozenset[str] = frozenset(
    {
        # cos-java-sdk-v5 (Headers.ENCRYPTION_*) and cos-go-sdk-v5 (coscrypto):
        # the IV goes to "-start", never to "-iv".
        "client-side-encryption-start",
        "client-side-encryption-cek-alg",
        "client-side-encryption-wrap-alg",
        "client-side-encryption-matdesc",
        "client-side-encryption-unencrypted-content-length",
        "client-side-encryption-unencrypted-content-md5",
        "client-side-encryption-data-size",
        "client-side-encryption-part-size",
        "client-side-encryption-tag-len",
        # cos-java-sdk-v5 stores the GCM tag length under its AWS-derived
        # constant (Headers.CRYPTO_TAG_LENGTH), and its older, AWS-style
        # envelope used these names as user metadata (x-cos-meta-x-cos-...).
        "x-cos-tag-len",
        "x-cos-key",
        "x-cos-key-v2",
        "x-cos-iv",
        "x-cos-matdesc",
        "x-cos-cek-alg",
        "x-cos-wrap-alg",
        "x-cos-unencrypted-content-length",
        "x-cos-unencrypted-content-md5",
        "x-cos-crypto-instr-file",
    }
)

#: Every metadata name that belongs to an envelope (ours, the Python SDK's,
#: and the Java/Go SDKs').  Layers that rewrite attributes must carry these
#: over unchanged, or the object becomes unreadable.
ENVELOPE_FIELDS: frozenset[str] = SDK_FIELDS | COSENCFS_FIELDS | FOREIGN_FIELDS

_KCV_LABEL = b"cosencfs-kcv-v1"
_CACHE_KEY_CONTEXT = b"cache-layer-key:"
_KCV_BYTES = 16
_KID_RE = re.compile(r"[0-9a-f]{16}")
# Foreign algorithm names are echoed in error messages; keep them short.
_MAX_ECHO = 48


class ObjectFormat(Enum):
    """What kind of object a metadata dict describes."""

    PLAIN = "plain"  # no envelope: not client-side encrypted
    SDK = "sdk"  # Python SDK envelope (key + iv only)
    COSENCFS = "cosencfs"  # Python SDK envelope + cosencfs fields
    FOREIGN = "foreign"  # Java/Go COS SDK envelope
    DAMAGED = "damaged"  # envelope fields present but unusable


def _is_foreign(name: str) -> bool:
    if name in SDK_FIELDS:
        return False
    return name.startswith(_FOREIGN_PREFIX) or name in FOREIGN_FIELDS


def is_envelope_field(name: str) -> bool:
    """True if ``name`` (without ``x-cos-meta-``) is part of some envelope."""
    n = name.lower()
    return n in ENVELOPE_FIELDS or n.startswith(_FOREIGN_PREFIX)


def strip_envelope(metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` without its envelope fields (names kept as given)."""
    return {k: v for k, v in metadata.items() if not is_envelope_field(k)}


def extract_envelope(metadata: Mapping[str, str]) -> dict[str, str]:
    """Only the envelope fields of ``metadata`` (names lowercased).

    ``{**new_attributes, **extract_envelope(old)}`` rewrites attributes
    without losing the object's key.
    """
    return {k.lower(): v for k, v in metadata.items() if is_envelope_field(k)}


def key_check_value(dk: DataKey) -> str:
    """base64 of the first 16 bytes of HMAC-SHA256(key, label || iv).

    A PRF output keyed by the 256-bit random data key: it tells a reader
    whether the key it unwrapped is the one the writer sealed, and reveals
    nothing about the data key, the IV or the master key.
    """
    return base64.b64encode(_kcv_bytes(dk)).decode("ascii")


def _kcv_bytes(dk: DataKey) -> bytes:
    return hmac.new(dk.key, _KCV_LABEL + dk.iv, hashlib.sha256).digest()[:_KCV_BYTES]


def _b64(value: str) -> bytes | None:
    try:
        return base64.b64decode(value.strip().encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None


def _echo(value: str) -> str:
    cleaned = "".join(c if c.isprintable() else "?" for c in value)
    return cleaned if len(cleaned) <= _MAX_ECHO else cleaned[:_MAX_ECHO] + "..."


@dataclass(slots=True, frozen=True, repr=False)
class _Analysis:
    format: ObjectFormat
    reason: str = ""
    wrapped_key: bytes = b""
    wrapped_iv: bytes = b""
    wrap: WrapAlg | None = None
    kid: str = ""
    kcv: bytes = b""


def _damaged(reason: str) -> _Analysis:
    return _Analysis(ObjectFormat.DAMAGED, reason)


def _analyse(metadata: Mapping[str, str]) -> _Analysis:
    m = {k.lower(): v for k, v in metadata.items()}

    foreign = sorted(n for n in m if _is_foreign(n))
    if foreign:
        details = []
        for alg_field in ("client-side-encryption-cek-alg", "client-side-encryption-wrap-alg"):
            if alg_field in m:
                details.append(f"{alg_field.removeprefix(_FOREIGN_PREFIX)}={_echo(m[alg_field])}")
        extra = f" ({', '.join(details)})" if details else ""
        return _Analysis(
            ObjectFormat.FOREIGN,
            f"envelope of another COS SDK (Java/Go): {', '.join(foreign)}{extra}",
        )

    ours = sorted(n for n in m if n in COSENCFS_FIELDS)
    has_key, has_iv = KEY_FIELD in m, IV_FIELD in m
    if not has_key and not has_iv:
        if ours:
            return _damaged(f"{', '.join(ours)} present without {KEY_FIELD} / {IV_FIELD}")
        return _Analysis(ObjectFormat.PLAIN)
    if not has_key:
        return _damaged(f"{IV_FIELD} present without {KEY_FIELD}")
    if not has_iv:
        return _damaged(f"{KEY_FIELD} present without {IV_FIELD}")

    wk = _b64(m[KEY_FIELD])
    if wk is None:
        return _damaged(f"{KEY_FIELD} is not valid base64")
    wiv = _b64(m[IV_FIELD])
    if wiv is None:
        return _damaged(f"{IV_FIELD} is not valid base64")

    if not ours:
        if not wrapped_lengths_plausible(len(wk), len(wiv)):
            return _damaged(f"impossible wrapped lengths: key {len(wk)} bytes, iv {len(wiv)} bytes")
        return _Analysis(ObjectFormat.SDK, wrapped_key=wk, wrapped_iv=wiv)

    version = m.get(VERSION_FIELD)
    if version is None:
        return _damaged(f"cosencfs fields without {VERSION_FIELD}")
    if version.strip() != FORMAT_VERSION:
        return _damaged(
            f"unsupported {VERSION_FIELD} {_echo(version)!r} (this cosencfs reads "
            f"version {FORMAT_VERSION}; a newer cosencfs wrote it?)"
        )
    wrap_text = m.get(WRAP_FIELD)
    if wrap_text is None:
        return _damaged(f"{WRAP_FIELD} missing")
    try:
        wrap = WrapAlg(wrap_text.strip())
    except ValueError:
        return _damaged(f"unknown {WRAP_FIELD} {_echo(wrap_text)!r}")
    if not wrapped_lengths_plausible(len(wk), len(wiv), wrap):
        return _damaged(
            f"wrapped lengths key {len(wk)} / iv {len(wiv)} bytes do not fit {wrap.value}"
        )
    kid = m.get(KID_FIELD, "").strip()
    if not _KID_RE.fullmatch(kid):
        return _damaged(f"{KID_FIELD} missing or malformed")
    kcv_text = m.get(KCV_FIELD)
    kcv = None if kcv_text is None else _b64(kcv_text)
    if kcv is None or len(kcv) != _KCV_BYTES:
        return _damaged(f"{KCV_FIELD} missing or malformed")
    return _Analysis(
        ObjectFormat.COSENCFS, wrapped_key=wk, wrapped_iv=wiv, wrap=wrap, kid=kid, kcv=kcv
    )


def classify(metadata: Mapping[str, str]) -> ObjectFormat:
    """Which :class:`ObjectFormat` ``metadata`` belongs to (no key needed)."""
    return _analyse(metadata).format


@dataclass(slots=True, frozen=True)
class EnvelopeInfo:
    """Public facts about an envelope, for diagnostics (nothing secret)."""

    format: ObjectFormat
    reason: str
    wrap: WrapAlg | None
    key_id: str


def inspect_envelope(metadata: Mapping[str, str]) -> EnvelopeInfo:
    """Format, the reason it is FOREIGN/DAMAGED, wrap algorithm and key id."""
    a = _analyse(metadata)
    return EnvelopeInfo(a.format, a.reason, a.wrap, a.kid)


def _rekey(exc: CryptoError, key: str, prefix: str = "") -> CryptoError:
    message = exc.args[0] if exc.args else type(exc).__name__
    return type(exc)(f"{prefix}{message}", key=key)


class EnvelopeCodec:
    """Seals data keys into metadata and opens them again.

    ``master`` wraps every new envelope.  ``also_read`` are further master
    keys accepted when opening (e.g. the previous key during rotation):
    cosencfs envelopes pick the key by its id; SDK envelopes (no id) try
    ``master`` first, then the others in order.
    """

    __slots__ = ("_master", "_readers")

    def __init__(self, master: MasterKey, *, also_read: Iterable[MasterKey] = ()) -> None:
        self._master = master
        readers = [master]
        for extra in also_read:
            if all(extra.key_id != r.key_id for r in readers):
                readers.append(extra)
        self._readers = tuple(readers)

    def __repr__(self) -> str:
        ids = ", ".join(r.key_id for r in self._readers)
        return f"EnvelopeCodec(key_ids=[{ids}])"

    @property
    def master(self) -> MasterKey:
        return self._master

    @property
    def key_id(self) -> str:
        return self._master.key_id

    @property
    def masters(self) -> tuple[MasterKey, ...]:
        """Every master key this codec opens envelopes with, the writing one first."""
        return self._readers

    def seal(self, dk: DataKey) -> dict[str, str]:
        """All envelope fields for an object encrypted with ``dk``."""
        wrapped_key, wrapped_iv, alg = self._master.wrap(dk)
        return {
            KEY_FIELD: base64.b64encode(wrapped_key).decode("ascii"),
            IV_FIELD: base64.b64encode(wrapped_iv).decode("ascii"),
            VERSION_FIELD: FORMAT_VERSION,
            WRAP_FIELD: alg.value,
            KID_FIELD: self._master.key_id,
            KCV_FIELD: key_check_value(dk),
        }

    def open(self, metadata: Mapping[str, str], *, key: str = "") -> DataKey:
        """The data key of the object whose metadata this is.

        Raises NotEncryptedError (PLAIN), ForeignFormatError (FOREIGN),
        DamagedEnvelopeError (DAMAGED, or a cosencfs key check that fails
        under the right key id) or WrongKeyError.  ``key`` (the object key)
        is named in every error.

        SDK envelopes carry no key-check value: with the ``aes-ctr`` wrap a
        wrong AES master key yields a wrong data key (and garbage plaintext)
        without any error; with RSA only the length checks apply.
        """
        a = _analyse(metadata)
        fmt = a.format
        if fmt is ObjectFormat.PLAIN:
            raise NotEncryptedError(
                "object has no client-side-encryption envelope (a plain upload)", key=key
            )
        if fmt is ObjectFormat.FOREIGN:
            raise ForeignFormatError(
                f"{a.reason}; the COS Python SDK format (and cosencfs) cannot read it", key=key
            )
        if fmt is ObjectFormat.DAMAGED:
            raise DamagedEnvelopeError(f"damaged envelope: {a.reason}", key=key)
        if fmt is ObjectFormat.COSENCFS:
            return self._open_cosencfs(a, key)
        return self._open_sdk(a, key)

    def _open_cosencfs(self, a: _Analysis, key: str) -> DataKey:
        master = next((r for r in self._readers if r.key_id == a.kid), None)
        if master is None:
            mine = ", ".join(r.key_id for r in self._readers)
            raise WrongKeyError(
                f"key check failed: the object was written with master key id {a.kid}, "
                f"this mount uses {mine}",
                key=key,
            )
        try:
            dk = master.unwrap(a.wrapped_key, a.wrapped_iv, a.wrap)
        except CryptoError as exc:
            raise _rekey(exc, key) from None
        if not hmac.compare_digest(_kcv_bytes(dk), a.kcv):
            # The id says this is our key, so a failing check means the
            # wrapped key or the check value was altered, not a wrong key.
            raise DamagedEnvelopeError(
                f"key check failed although the object names this mount's master key id "
                f"{a.kid}: the envelope was altered or damaged",
                key=key,
            )
        return dk

    def _open_sdk(self, a: _Analysis, key: str) -> DataKey:
        failures: list[WrongKeyError] = []
        for master in self._readers:
            try:
                return master.unwrap(a.wrapped_key, a.wrapped_iv, None)
            except WrongKeyError as exc:
                failures.append(exc)
            except CryptoError as exc:
                raise _rekey(exc, key) from None
        if len(failures) == 1:
            raise _rekey(failures[0], key) from None
        ids = ", ".join(r.key_id for r in self._readers)
        raise WrongKeyError(
            f"none of the master keys ({ids}) opens this SDK envelope", key=key
        ) from None

    def wrap_cache_key(self, secret: bytes, vid: str) -> str:
        """A cache layer's key, wrapped for the journal and bound to the layer id."""
        blob = self._master.seal_secret(secret, _CACHE_KEY_CONTEXT + vid.encode("ascii"))
        return f"{self._master.key_id}:{base64.b64encode(blob).decode('ascii')}"

    def unwrap_cache_key(self, wrapped: str, vid: str) -> bytes:
        kid, _, text = wrapped.partition(":")
        blob = _b64(text)
        if blob is None:
            raise DamagedEnvelopeError(f"cache layer {vid}: its wrapped key is not base64")
        master = next((r for r in self._readers if r.key_id == kid), None)
        if master is None:
            raise WrongKeyError(
                f"cache layer {vid} was written with master key id {kid!r}; "
                f"this mount has {', '.join(r.key_id for r in self._readers)}"
            )
        return master.open_secret(blob, _CACHE_KEY_CONTEXT + vid.encode("ascii"))

    def rewrap(
        self, metadata: Mapping[str, str], new_codec: EnvelopeCodec, *, key: str = ""
    ) -> dict[str, str]:
        """``metadata`` with the same data key re-sealed by ``new_codec``.

        For key rotation: the body is untouched (same data key and IV);
        only the envelope changes.  Non-envelope fields are kept.
        """
        dk = self.open(metadata, key=key)
        return {**strip_envelope(metadata), **new_codec.seal(dk)}
