"""Master keys: wrapping and unwrapping per-object data keys.

A master key never touches object bodies; it only protects each object's
:class:`~cosencfs.crypto.ctr.DataKey` (32-byte key + 16-byte IV), which is
stored wrapped in the object's metadata (see :mod:`cosencfs.crypto.envelope`).

Wrap algorithms (``WrapAlg``):

``aes-ctr``
    What ``qcloud_cos.crypto.AESProvider`` writes:
    ``wrapped_key || wrapped_iv = (key || iv) XOR AES_K(0) || AES_K(1) || AES_K(2)``
    (CTR mode, counter restarting at 0 for every object).  Every object is
    therefore XORed with the same 48-byte pad; see docs/format.md.
``aes-kw``
    RFC 3394 AES key wrap of the key and of the IV, separately.  Detects a
    wrong master key by itself and hides the data key properly.  The SDK
    cannot read it.
``rsa-oaep``
    What ``RSAProvider`` writes when the key pair comes from files:
    RSAES-OAEP with SHA-1 and MGF1-SHA-1, empty label; key and IV encrypted
    separately.
``rsa-pkcs1v15``
    What ``RSAProvider`` writes when the key pair is given as values
    (``RSAProvider.get_rsa_key_pair``): RSAES-PKCS1-v1_5.  cosencfs reads it
    but never writes it.

Errors are raised without an object key; :class:`EnvelopeCodec` re-raises
them naming the object.  No message ever contains key material.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import Enum
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from cosencfs.crypto.ctr import (
    IV_SIZE,
    KEY_SIZE,
    DataKey,
    RecordTagError,
    open_record,
    sdk_wrap_pad,
    seal_record,
)
from cosencfs.errors import ConfigError, DamagedEnvelopeError, WrongKeyError

__all__ = [
    "AES_MASTER_KEY_SIZES",
    "AesMasterKey",
    "MasterKey",
    "RsaMasterKey",
    "WrapAlg",
    "wrapped_lengths_plausible",
]

AES_MASTER_KEY_SIZES = (16, 24, 32)
#: Domain of the secrets the cache journal keeps wrapped (cache keys).
_JOURNAL_LABEL = b"cosencfs journal secret v1"

_KEY_ID_LABEL = b"cosencfs key id v1"
_KEY_ID_HEX_DIGITS = 16
# RFC 3394 adds one 8-byte integrity block.
_KW_OVERHEAD = 8
# Smallest and largest RSA moduli (in bytes) we accept as plausible when
# judging whether wrapped lengths could be RSA at all: 512..16384 bits.
_RSA_MIN_BYTES = 64
_RSA_MAX_BYTES = 2048


class WrapAlg(Enum):
    """How a data key and IV are wrapped under the master key."""

    SDK_AES_CTR = "aes-ctr"
    AES_KW = "aes-kw"
    RSA_OAEP = "rsa-oaep"
    RSA_PKCS1V15 = "rsa-pkcs1v15"

    @property
    def is_rsa(self) -> bool:
        return self in (WrapAlg.RSA_OAEP, WrapAlg.RSA_PKCS1V15)

    @property
    def is_aes(self) -> bool:
        return not self.is_rsa


def wrapped_lengths_plausible(key_len: int, iv_len: int, alg: WrapAlg | None = None) -> bool:
    """Whether wrapped key/IV lengths can come from ``alg`` (any alg if None).

    Used to tell a damaged envelope (truncated value) from a wrong key
    before spending an RSA operation on it.
    """
    aes_ctr = key_len == KEY_SIZE and iv_len == IV_SIZE
    aes_kw = key_len == KEY_SIZE + _KW_OVERHEAD and iv_len == IV_SIZE + _KW_OVERHEAD
    rsa_ok = key_len == iv_len and _RSA_MIN_BYTES <= key_len <= _RSA_MAX_BYTES
    if alg is None:
        return aes_ctr or aes_kw or rsa_ok
    if alg is WrapAlg.SDK_AES_CTR:
        return aes_ctr
    if alg is WrapAlg.AES_KW:
        return aes_kw
    return rsa_ok


@runtime_checkable
class MasterKey(Protocol):
    """What :class:`~cosencfs.crypto.envelope.EnvelopeCodec` needs of a master key."""

    @property
    def key_id(self) -> str:
        """Short public fingerprint; equal ids mean the same master key."""
        ...

    @property
    def kind(self) -> str:
        """``"aes"`` or ``"rsa"`` (for messages)."""
        ...

    @property
    def wrap_alg(self) -> WrapAlg:
        """The algorithm :meth:`wrap` uses."""
        ...

    @property
    def can_unwrap(self) -> bool:
        """False for a public-key-only RSA master key."""
        ...

    def wrap(self, dk: DataKey) -> tuple[bytes, bytes, WrapAlg]:
        """Return ``(wrapped_key, wrapped_iv, alg)``."""
        ...

    def seal_secret(self, secret: bytes, context: bytes) -> bytes:
        """Wrap a secret of the cache (never an object's data key) for the journal."""
        ...

    def open_secret(self, blob: bytes, context: bytes) -> bytes:
        """Unwrap what :meth:`seal_secret` made with the same ``context``."""
        ...

    def unwrap(self, wrapped_key: bytes, wrapped_iv: bytes, alg: WrapAlg | None = None) -> DataKey:
        """Recover the data key; ``alg=None`` tries whatever applies.

        Raises WrongKeyError or DamagedEnvelopeError (without object key).
        """
        ...


# --------------------------------------------------------------------------
# AES


class AesMasterKey:
    """A symmetric master key of 16, 24 or 32 bytes (AES-128/192/256).

    ``hardened=False`` wraps exactly like the SDK's ``AESProvider``
    (``aes-ctr``); ``hardened=True`` wraps with RFC 3394 (``aes-kw``), which
    the SDK cannot read.  Either instance unwraps both.
    """

    __slots__ = ("_hardened", "_journal", "_key_id", "_pad", "_raw")

    def __init__(self, raw: bytes, *, hardened: bool = False) -> None:
        raw = bytes(raw)
        if len(raw) not in AES_MASTER_KEY_SIZES:
            raise ValueError(f"an AES master key must be 16, 24 or 32 bytes, got {len(raw)}")
        self._raw = raw
        self._hardened = hardened
        # The SDK's wrap keystream never changes (counter restarts at 0 for
        # every object), so it is computed once.
        self._pad = sdk_wrap_pad(raw, KEY_SIZE + IV_SIZE)
        self._journal = HKDF(hashes.SHA256(), 32, salt=None, info=_JOURNAL_LABEL).derive(raw)
        # HMAC is a PRF: the id is indistinguishable from random to anyone
        # without the key and cannot be turned back into it.
        tag = hmac.new(raw, _KEY_ID_LABEL, hashlib.sha256).hexdigest()
        self._key_id = tag[:_KEY_ID_HEX_DIGITS]

    def __repr__(self) -> str:
        return (
            f"AesMasterKey(bits={len(self._raw) * 8}, key_id={self._key_id!r}, "
            f"hardened={self._hardened})"
        )

    __str__ = __repr__

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def kind(self) -> str:
        return "aes"

    @property
    def bits(self) -> int:
        return len(self._raw) * 8

    @property
    def hardened(self) -> bool:
        return self._hardened

    @property
    def wrap_alg(self) -> WrapAlg:
        return WrapAlg.AES_KW if self._hardened else WrapAlg.SDK_AES_CTR

    @property
    def can_unwrap(self) -> bool:
        return True

    def _xor_pad(self, data: bytes) -> bytes:
        n = KEY_SIZE + IV_SIZE
        mixed = int.from_bytes(data, "big") ^ int.from_bytes(self._pad, "big")
        return mixed.to_bytes(n, "big")

    def wrap(self, dk: DataKey) -> tuple[bytes, bytes, WrapAlg]:
        if self._hardened:
            return (
                aes_key_wrap(self._raw, dk.key),
                aes_key_wrap(self._raw, dk.iv),
                WrapAlg.AES_KW,
            )
        out = self._xor_pad(dk.key + dk.iv)
        return out[:KEY_SIZE], out[KEY_SIZE:], WrapAlg.SDK_AES_CTR

    def seal_secret(self, secret: bytes, context: bytes) -> bytes:
        """Wrap a cache secret for the journal: AES-GCM under a key derived with HKDF.

        Never the SDK's fixed-pad wrap, whatever ``hardened`` says: with that
        pad, one leaked data key would unwrap every secret wrapped the same way.
        """
        return seal_record(self._journal, secret, context)

    def open_secret(self, blob: bytes, context: bytes) -> bytes:
        try:
            return open_record(self._journal, blob, context)
        except RecordTagError:
            raise WrongKeyError(
                "a secret in the cache journal does not open with this master key"
            ) from None

    def unwrap(self, wrapped_key: bytes, wrapped_iv: bytes, alg: WrapAlg | None = None) -> DataKey:
        klen, ivlen = len(wrapped_key), len(wrapped_iv)
        if alg is None:
            if wrapped_lengths_plausible(klen, ivlen, WrapAlg.SDK_AES_CTR):
                alg = WrapAlg.SDK_AES_CTR
            elif wrapped_lengths_plausible(klen, ivlen, WrapAlg.AES_KW):
                alg = WrapAlg.AES_KW
            elif wrapped_lengths_plausible(klen, ivlen):
                raise WrongKeyError(
                    f"the data key is wrapped with RSA ({klen * 8}-bit blocks); "
                    "this mount has an AES master key"
                )
            else:
                raise DamagedEnvelopeError(
                    f"impossible wrapped lengths: key {klen} bytes, iv {ivlen} bytes"
                )
        if alg.is_rsa:
            raise WrongKeyError(
                f"the data key is wrapped with {alg.value}; this mount has an AES master key"
            )
        if not wrapped_lengths_plausible(klen, ivlen, alg):
            raise DamagedEnvelopeError(
                f"wrapped lengths key {klen} / iv {ivlen} bytes do not fit {alg.value}"
            )
        if alg is WrapAlg.SDK_AES_CTR:
            # Any 48 bytes "unwrap": this wrap cannot detect a wrong key.
            # The envelope's key-check value does, when present.
            out = self._xor_pad(bytes(wrapped_key) + bytes(wrapped_iv))
            return DataKey(out[:KEY_SIZE], out[KEY_SIZE:])
        try:
            key = aes_key_unwrap(self._raw, bytes(wrapped_key))
            iv = aes_key_unwrap(self._raw, bytes(wrapped_iv))
        except InvalidUnwrap:
            raise WrongKeyError(
                "AES key unwrap (RFC 3394) failed: wrong master key or altered envelope"
            ) from None
        return DataKey(key, iv)


# --------------------------------------------------------------------------
# RSA

_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


def _journal_oaep(context: bytes) -> padding.OAEP:
    return padding.OAEP(
        mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=_JOURNAL_LABEL + context
    )


_PKCS1V15 = padding.PKCS1v15()


def _public_key_id(public_key: rsa.RSAPublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:_KEY_ID_HEX_DIGITS]


class RsaMasterKey:
    """An RSA key pair (or only its public half, which can wrap but not unwrap).

    Wraps with OAEP/SHA-1 like the SDK's file-based ``RSAProvider``.
    Unwrap tries OAEP, then PKCS#1 v1.5, and accepts only a 32-byte key and a
    16-byte IV.  ``cryptography``'s v1.5 decryption uses implicit rejection:
    with a wrong key it returns pseudo-random bytes of pseudo-random length
    (0..k-11) instead of raising, so only the length checks, and the
    envelope's key-check value, catch a wrong key there.
    """

    __slots__ = ("_key_id", "_private", "_public")

    def __init__(
        self,
        private_key: rsa.RSAPrivateKey | None,
        public_key: rsa.RSAPublicKey | None = None,
    ) -> None:
        if private_key is not None and not isinstance(private_key, rsa.RSAPrivateKey):
            raise TypeError("private_key must be an RSA private key")
        if public_key is not None and not isinstance(public_key, rsa.RSAPublicKey):
            raise TypeError("public_key must be an RSA public key")
        public: rsa.RSAPublicKey
        if private_key is not None:
            public = private_key.public_key()
            if public_key is not None and public_key.public_numbers() != public.public_numbers():
                # Writing with one pair and reading with another would make
                # every new object unreadable: refuse at start-up instead.
                raise ConfigError("the RSA public key does not belong to the private key")
        elif public_key is not None:
            public = public_key
        else:
            raise ValueError("RsaMasterKey needs a private key, a public key or both")
        self._private = private_key
        self._public = public
        self._key_id = _public_key_id(public)

    def __repr__(self) -> str:
        half = "pair" if self._private is not None else "public-only"
        return f"RsaMasterKey(bits={self.bits}, {half}, key_id={self._key_id!r})"

    __str__ = __repr__

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def kind(self) -> str:
        return "rsa"

    @property
    def bits(self) -> int:
        return self._public.key_size

    @property
    def block_bytes(self) -> int:
        """Length of every wrapped value: the modulus size in bytes."""
        return (self._public.key_size + 7) // 8

    @property
    def wrap_alg(self) -> WrapAlg:
        return WrapAlg.RSA_OAEP

    @property
    def can_unwrap(self) -> bool:
        return self._private is not None

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def seal_secret(self, secret: bytes, context: bytes) -> bytes:
        """Wrap a cache secret for the journal: RSA-OAEP-SHA256, ``context`` as label.

        The public key suffices to wrap (a write-only mount journals too);
        opening needs the private key.
        """
        return self._public.encrypt(secret, _journal_oaep(context))

    def open_secret(self, blob: bytes, context: bytes) -> bytes:
        if self._private is None:
            raise WrongKeyError(
                "the cache journal's secrets need the RSA private key; this mount has "
                "only the public key"
            )
        try:
            return self._private.decrypt(blob, _journal_oaep(context))
        except ValueError:
            raise WrongKeyError(
                "a secret in the cache journal does not open with this master key"
            ) from None

    def wrap(self, dk: DataKey) -> tuple[bytes, bytes, WrapAlg]:
        return (
            self._public.encrypt(dk.key, _OAEP),
            self._public.encrypt(dk.iv, _OAEP),
            WrapAlg.RSA_OAEP,
        )

    def unwrap(self, wrapped_key: bytes, wrapped_iv: bytes, alg: WrapAlg | None = None) -> DataKey:
        if alg is not None and alg.is_aes:
            raise WrongKeyError(
                f"the data key is wrapped with {alg.value}; this mount has an RSA master key"
            )
        private = self._private
        if private is None:
            raise WrongKeyError(
                "this mount has only the RSA public key: it can write objects but not read them"
            )
        klen, ivlen = len(wrapped_key), len(wrapped_iv)
        k = self.block_bytes
        if klen != k or ivlen != k:
            if klen == ivlen and wrapped_lengths_plausible(klen, ivlen, WrapAlg.RSA_OAEP):
                raise WrongKeyError(
                    f"the data key is wrapped for a {klen * 8}-bit RSA key; "
                    f"this mount's key is {self.bits}-bit"
                )
            if wrapped_lengths_plausible(klen, ivlen):
                raise WrongKeyError(
                    "the data key is wrapped with an AES master key; "
                    "this mount has an RSA master key"
                )
            raise DamagedEnvelopeError(
                f"impossible wrapped lengths: key {klen} bytes, iv {ivlen} bytes "
                f"(RSA-{self.bits} needs {k} and {k})"
            )
        wk, wiv = bytes(wrapped_key), bytes(wrapped_iv)

        if alg in (None, WrapAlg.RSA_OAEP):
            try:
                key = private.decrypt(wk, _OAEP)
            except ValueError:
                key = None
            if key is not None:
                # OAEP decryption succeeding by chance under a wrong key is
                # negligible, so from here on failures mean damage.
                try:
                    iv = private.decrypt(wiv, _OAEP)
                except ValueError:
                    raise DamagedEnvelopeError(
                        "the wrapped key opens with RSA-OAEP but the wrapped IV does not"
                    ) from None
                if len(key) != KEY_SIZE or len(iv) != IV_SIZE:
                    raise DamagedEnvelopeError(
                        f"RSA-OAEP gave a {len(key)}-byte key and a {len(iv)}-byte IV "
                        f"(expected {KEY_SIZE} and {IV_SIZE})"
                    )
                return DataKey(key, iv)
            if alg is WrapAlg.RSA_OAEP:
                raise WrongKeyError("RSA-OAEP decryption failed: wrong master key")

        # PKCS#1 v1.5 with implicit rejection: never raises on bad padding
        # (it may on malformed input, e.g. a value >= the modulus), so the
        # lengths are the only check at this level.
        try:
            key = private.decrypt(wk, _PKCS1V15)
            iv = private.decrypt(wiv, _PKCS1V15)
        except ValueError:
            key = iv = b""
        if len(key) != KEY_SIZE or len(iv) != IV_SIZE:
            raise WrongKeyError(
                "RSA decryption did not yield a 32-byte key and a 16-byte IV: wrong master key"
            )
        return DataKey(key, iv)
