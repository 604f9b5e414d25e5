"""Master keys: the ``MasterKey`` protocol, and the one place to import every kind from.

The kinds live in modules of their own (:mod:`~cosencfs.crypto.aeskey`,
:mod:`~cosencfs.crypto.rsakey`, with ``WrapAlg`` in
:mod:`~cosencfs.crypto.wrapping`); their names stay importable from here.

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

from typing import Protocol, runtime_checkable

from cosencfs.crypto.aeskey import AES_MASTER_KEY_SIZES, AesMasterKey
from cosencfs.crypto.ctr import DataKey
from cosencfs.crypto.rsakey import RsaMasterKey
from cosencfs.crypto.wrapping import WrapAlg, wrapped_lengths_plausible

__all__ = [
    "AES_MASTER_KEY_SIZES",
    "AesMasterKey",
    "MasterKey",
    "RsaMasterKey",
    "WrapAlg",
    "wrapped_lengths_plausible",
]


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

    def integrity_key(self) -> bytes:
        """The 32-byte key of the integrity tags, from the secret master material only.

        Raises CryptoError when the key has no secret half (a public-only
        RSA key).  Never log or show the result; see docs/format.md, section 12.
        """
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
