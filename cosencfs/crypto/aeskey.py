"""AES master keys: the SDK's fixed-pad wrap (``aes-ctr``) and RFC 3394 (``aes-kw``).

See :mod:`cosencfs.crypto.master` for the wrap algorithms and docs/format.md
for why the SDK's wrap is weak.  No message ever contains key material.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
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
from cosencfs.crypto.wrapping import (
    INTEGRITY_KEY_SIZE,
    INTEGRITY_LABEL,
    JOURNAL_LABEL,
    KEY_ID_HEX_DIGITS,
    WrapAlg,
    wrapped_lengths_plausible,
)
from cosencfs.errors import DamagedEnvelopeError, WrongKeyError

__all__ = ["AES_MASTER_KEY_SIZES", "AesMasterKey"]

AES_MASTER_KEY_SIZES = (16, 24, 32)

_KEY_ID_LABEL = b"cosencfs key id v1"


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
        self._journal = HKDF(hashes.SHA256(), 32, salt=None, info=JOURNAL_LABEL).derive(raw)
        # HMAC is a PRF: the id is indistinguishable from random to anyone
        # without the key and cannot be turned back into it.
        tag = hmac.new(raw, _KEY_ID_LABEL, hashlib.sha256).hexdigest()
        self._key_id = tag[:KEY_ID_HEX_DIGITS]

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

    def integrity_key(self) -> bytes:
        """The key of the integrity tags: HKDF-SHA256 of the raw master key.

        Independent of ``hardened``: the SDK's fixed-pad wrap weakens data
        keys (one leaked data key gives the pad), never the master key, and
        nothing here depends on a data key.  See docs/format.md, section 12.
        """
        return HKDF(
            hashes.SHA256(), INTEGRITY_KEY_SIZE, salt=None, info=INTEGRITY_LABEL + b"\0aes"
        ).derive(self._raw)

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
