"""AES-256-CTR at any byte offset, byte-compatible with the COS Python SDK.

The SDK (``qcloud_cos.crypto.AESCTRCipher``) runs AES-256 in CTR mode with a
128-bit big-endian counter whose initial value is the whole 16-byte IV.
Block ``n`` of an object (bytes ``16n .. 16n+15``) is XORed with
``AES_K((int(IV) + n) mod 2**128)``.  Because every block's keystream depends
only on its index, any byte range can be encrypted or decrypted on its own:
that is what lets cosencfs upload multipart parts in parallel and decrypt
ranged GETs without touching the bytes before them.

``cryptography``'s CTR mode increments the full 16-byte counter block with
carry and wraps at ``2**128`` (so does pycryptodome's ``Counter.new(128)``),
which is what makes the two interoperable for every IV.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

__all__ = [
    "BLOCK_SIZE",
    "IV_SIZE",
    "KEY_SIZE",
    "DataKey",
    "counter_block",
    "crypt",
]

BLOCK_SIZE = 16
KEY_SIZE = 32
IV_SIZE = 16

_COUNTER_MOD = 1 << 128
_ZEROS = bytes(BLOCK_SIZE)

Buffer = bytes | bytearray | memoryview


@dataclass(slots=True, frozen=True, repr=False)
class DataKey:
    """One object version's data key (32 bytes) and counter IV (16 bytes).

    ``repr``/``str`` never show the bytes, so a DataKey that ends up in a log
    line or a traceback's locals does not leak.
    """

    key: bytes
    iv: bytes

    def __post_init__(self) -> None:
        # Coerce to immutable bytes: a caller's bytearray could be changed (or
        # zeroed) behind our back after the key was handed over.
        key, iv = self.key, self.iv
        if not isinstance(key, bytes | bytearray | memoryview):
            raise TypeError("DataKey.key must be bytes")
        if not isinstance(iv, bytes | bytearray | memoryview):
            raise TypeError("DataKey.iv must be bytes")
        key, iv = bytes(key), bytes(iv)
        if len(key) != KEY_SIZE:
            raise ValueError(f"DataKey.key must be {KEY_SIZE} bytes, got {len(key)}")
        if len(iv) != IV_SIZE:
            raise ValueError(f"DataKey.iv must be {IV_SIZE} bytes, got {len(iv)}")
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "iv", iv)

    def __repr__(self) -> str:
        return "DataKey(<secret>)"

    __str__ = __repr__

    @classmethod
    def generate(cls) -> DataKey:
        """A fresh random key and IV from the OS CSPRNG.

        Call this for every object version written: CTR is only secure if a
        (key, counter) pair never encrypts two different plaintexts.
        """
        return cls(os.urandom(KEY_SIZE), os.urandom(IV_SIZE))


def counter_block(iv: bytes, offset: int) -> bytes:
    """The 16-byte CTR counter block covering byte ``offset`` of the body.

    ``(int.from_bytes(iv, "big") + offset // 16) mod 2**128`` as 16
    big-endian bytes.  Bytes ``offset % 16`` of that block's keystream are
    skipped by :func:`crypt` when ``offset`` is not block-aligned.
    """
    if len(iv) != IV_SIZE:
        raise ValueError(f"IV must be {IV_SIZE} bytes, got {len(iv)}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    value = (int.from_bytes(iv, "big") + offset // BLOCK_SIZE) % _COUNTER_MOD
    return value.to_bytes(IV_SIZE, "big")


def _keystream_at(dk: DataKey, offset: int) -> CipherContext:
    ctx = Cipher(algorithms.AES(dk.key), modes.CTR(counter_block(dk.iv, offset))).encryptor()
    skip = offset % BLOCK_SIZE
    if skip:
        # Burning the first `skip` keystream bytes on zeros positions the
        # context mid-block; OpenSSL keeps the rest of that block for the
        # next update, so no Python-level per-block work is needed.
        ctx.update(_ZEROS[:skip])
    return ctx


def crypt(dk: DataKey, offset: int, data: Buffer) -> bytes:
    """Encrypt or decrypt ``data`` that sits at byte ``offset`` of an object.

    CTR is an XOR with a keystream, so encryption and decryption are the same
    operation.  ``crypt(dk, o, body[o:o+n]) == crypt(dk, 0, body)[o:o+n]`` for
    every ``o`` and ``n``.
    """
    return _keystream_at(dk, offset).update(data)
