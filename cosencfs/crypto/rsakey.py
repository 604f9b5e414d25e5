"""RSA master keys: OAEP/SHA-1 wrap as the SDK's ``RSAProvider``; unwrap by OAEP, then PKCS#1 v1.5.

See :mod:`cosencfs.crypto.master` for the wrap algorithms.  No message ever
contains key material.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cosencfs.crypto.ctr import IV_SIZE, KEY_SIZE, DataKey
from cosencfs.crypto.wrapping import (
    INTEGRITY_KEY_SIZE,
    INTEGRITY_LABEL,
    JOURNAL_LABEL,
    KEY_ID_HEX_DIGITS,
    WrapAlg,
    wrapped_lengths_plausible,
)
from cosencfs.errors import ConfigError, CryptoError, DamagedEnvelopeError, WrongKeyError

__all__ = ["RsaMasterKey"]

_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


def _journal_oaep(context: bytes) -> padding.OAEP:
    return padding.OAEP(
        mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=JOURNAL_LABEL + context
    )


_PKCS1V15 = padding.PKCS1v15()


def _public_key_id(public_key: rsa.RSAPublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:KEY_ID_HEX_DIGITS]


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

    def integrity_key(self) -> bytes:
        """The key of the integrity tags: HKDF-SHA256 of the private key's prime factors.

        The public key counts as known to an attacker, so only the private
        half can key the tags; a public-key-only master key raises
        CryptoError.  The input is the two primes, smaller first, each as
        big-endian bytes of the modulus length: unlike the private exponent
        (``e^-1`` mod phi(n) or mod lambda(n), depending on the tool that made
        the key) they are the same in every encoding of one key pair.  See
        docs/format.md, section 12.
        """
        if self._private is None:
            raise CryptoError(
                "integrity tags need the RSA private key; this master key is public-only "
                "(it can wrap data keys but cannot tag or verify objects)"
            )
        numbers = self._private.private_numbers()
        k = self.block_bytes
        low, high = sorted((numbers.p, numbers.q))
        ikm = low.to_bytes(k, "big") + high.to_bytes(k, "big")
        return HKDF(
            hashes.SHA256(), INTEGRITY_KEY_SIZE, salt=None, info=INTEGRITY_LABEL + b"\0rsa"
        ).derive(ikm)

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
