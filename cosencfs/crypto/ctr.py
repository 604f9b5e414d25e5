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

This is the one module that builds keystream ciphers (CTR, and GCM, whose
body is CTR too): a test fails if any other module of the package does.
Every encryption under a data key goes through :func:`encrypt` or
:func:`seal_record`, which feed the test-only keystream ledger
(:mod:`cosencfs.crypto.ledger`) when it is switched on; :func:`decrypt` and
:func:`open_record` never encrypt anything new and are not recorded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cosencfs.crypto import ledger as _ledger_mod

__all__ = [
    "BLOCK_SIZE",
    "IV_SIZE",
    "KEY_SIZE",
    "NONCE_SIZE",
    "TAG_SIZE",
    "DataKey",
    "RecordSealer",
    "RecordTagError",
    "counter_block",
    "decrypt",
    "decrypt_into",
    "encrypt",
    "open_record",
    "sdk_wrap_pad",
    "seal_record",
]

BLOCK_SIZE = 16
KEY_SIZE = 32
IV_SIZE = 16

#: AES-GCM record nonce and tag (cache records, journal secrets).
NONCE_SIZE = 12
TAG_SIZE = 16

_COUNTER_MOD = 1 << 128
_ZEROS = bytes(BLOCK_SIZE)
# Test-only keystream ledger (None in production; see cosencfs.crypto.ledger).
_LEDGER = _ledger_mod.from_environment()

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


def encrypt(dk: DataKey, offset: int, plain: Buffer) -> bytes:
    """Encrypt ``plain``, which sits at byte ``offset`` of an object body.

    The caller promises that no other plaintext was or will be encrypted at
    these offsets under ``dk``: each object version has its own data key,
    drawn when the version is sealed, and every byte of it is encrypted once
    (re-encrypting the same bytes after a crash gives the same ciphertext).
    """
    if _LEDGER is not None:
        _LEDGER.record(dk.key, counter_block(dk.iv, offset), offset % BLOCK_SIZE, plain)
    return _keystream_at(dk, offset).update(plain)


def encrypt_into(dk: DataKey, offset: int, plain: Buffer, out: memoryview) -> None:
    """:func:`encrypt` into ``out`` (exactly ``len(plain)`` bytes), the same promise."""
    if len(out) != len(plain):
        raise ValueError(f"output of {len(out)} bytes for {len(plain)} of plaintext")
    if _LEDGER is not None:
        _LEDGER.record(dk.key, counter_block(dk.iv, offset), offset % BLOCK_SIZE, plain)
    _keystream_at(dk, offset).update_into(plain, out)


def decrypt(dk: DataKey, offset: int, cipher: Buffer) -> bytes:
    """Decrypt ``cipher`` found at byte ``offset`` of an object body.

    CTR is an XOR with a keystream, so ``decrypt(dk, o, body[o:o+n]) ==
    decrypt(dk, 0, body)[o:o+n]`` for every ``o`` and ``n``.
    """
    return _keystream_at(dk, offset).update(cipher)


def decrypt_into(dk: DataKey, offset: int, cipher: Buffer, out: memoryview) -> None:
    """:func:`decrypt` into ``out`` (exactly ``len(cipher)`` bytes, not overlapping it)."""
    if len(out) != len(cipher):
        raise ValueError(f"output of {len(out)} bytes for {len(cipher)} of ciphertext")
    _keystream_at(dk, offset).update_into(cipher, out)


class RecordTagError(ValueError):
    """An AES-GCM record did not verify: altered, truncated or another key."""


def _gcm_first_counter(nonce: bytes) -> bytes:
    # GCM with a 96-bit nonce encrypts block i of the plaintext with counter
    # block nonce || (i + 2) (block nonce || 1 masks the tag).
    return nonce + (2).to_bytes(4, "big")


def seal_record(key: bytes, plain: Buffer, aad: bytes) -> bytes:
    """AES-256-GCM under a fresh random nonce: ``nonce || ciphertext || tag``.

    For bytes that are not (yet) an object body: dirty data in the cache and
    secrets in the journal.  A random 96-bit nonce per record keeps every
    (key, counter block) pair fresh however often the same range is written;
    the tag makes a tampered cache a clear error instead of garbage.
    """
    nonce = os.urandom(NONCE_SIZE)
    if _LEDGER is not None:
        _LEDGER.record(key, _gcm_first_counter(nonce), 0, plain)
    return nonce + AESGCM(key).encrypt(nonce, bytes(plain), aad)


def open_record(key: bytes, record: Buffer, aad: bytes) -> bytes:
    """The plaintext of a :func:`seal_record` result; RecordTagError if it does not verify."""
    view = memoryview(record)
    if len(view) < NONCE_SIZE + TAG_SIZE:
        raise RecordTagError("record too short")
    try:
        return AESGCM(key).decrypt(bytes(view[:NONCE_SIZE]), bytes(view[NONCE_SIZE:]), aad)
    except InvalidTag:
        raise RecordTagError("record does not verify") from None


class RecordSealer:
    """:func:`seal_record` / :func:`open_record` under one key, its AES-GCM context made once.

    For a dirty layer's many small records: each seals into a buffer the
    caller lays out (no copy of the plaintext or of the sealed bytes), under
    a fresh random nonce, recorded by the ledger as :func:`seal_record` does.
    """

    __slots__ = ("_aead", "_key")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._aead = AESGCM(key)

    def seal_into(self, out: memoryview, plain: Buffer, aad: bytes) -> None:
        """Write ``nonce || ciphertext || tag`` of ``plain`` into ``out`` (exactly that long)."""
        if len(out) != NONCE_SIZE + len(plain) + TAG_SIZE:
            raise ValueError("record buffer of the wrong size")
        nonce = os.urandom(NONCE_SIZE)
        if _LEDGER is not None:
            _LEDGER.record(self._key, _gcm_first_counter(nonce), 0, plain)
        out[:NONCE_SIZE] = nonce
        self._aead.encrypt_into(nonce, plain, aad, out[NONCE_SIZE:])

    def open(self, record: Buffer, aad: bytes) -> bytes:
        """As :func:`open_record` under this sealer's key."""
        view = memoryview(record)
        if len(view) < NONCE_SIZE + TAG_SIZE:
            raise RecordTagError("record too short")
        try:
            return self._aead.decrypt(view[:NONCE_SIZE], view[NONCE_SIZE:], aad)
        except InvalidTag:
            raise RecordTagError("record does not verify") from None


def sdk_wrap_pad(master: bytes, length: int) -> bytes:
    """The SDK's AESProvider wrap keystream: AES-CTR under the master key from counter 0.

    The SDK XORs every object's data key and IV with these same bytes; that
    reuse is the SDK format's (docs/format.md), kept for compatibility and
    not a data-key encryption, so the ledger does not record it.
    """
    return (
        Cipher(algorithms.AES(master), modes.CTR(bytes(BLOCK_SIZE)))
        .encryptor()
        .update(bytes(length))
    )
