"""AES-256-CTR at arbitrary offsets: known answers and SDK equivalence."""

from __future__ import annotations

import itertools
import os

import pytest
from Crypto.Cipher import AES
from Crypto.Util import Counter
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from qcloud_cos.crypto import AESCTRCipher, iv_to_big_int

from cosencfs.crypto import DataKey, counter_block, decrypt

# NIST SP 800-38A, F.5.5 CTR-AES256.Encrypt / F.5.6 CTR-AES256.Decrypt.
NIST_KEY = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
NIST_COUNTER = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
NIST_PLAIN = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172a"
    "ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef"
    "f69f2445df4f9b17ad2b417be66c3710"
)
NIST_CIPHER = bytes.fromhex(
    "601ec313775789a5b7a7f504bbf3d228"
    "f443e3ca4d62b59aca84e990cacaf5c5"
    "2b0930daa23de94ce87017ba2d84988d"
    "dfc9c58db67aada613c2dd08457941a6"
)
# F.5.5 lists the input blocks; the second one shows the carry out of the
# last byte.
NIST_INPUT_BLOCKS = [
    "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
    "f0f1f2f3f4f5f6f7f8f9fafbfcfdff00",
    "f0f1f2f3f4f5f6f7f8f9fafbfcfdff01",
    "f0f1f2f3f4f5f6f7f8f9fafbfcfdff02",
]

NIST_DK = DataKey(NIST_KEY, NIST_COUNTER)


def _ecb(key: bytes, blocks: bytes) -> bytes:
    """Keystream computed independently of any CTR implementation."""
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(blocks) + enc.finalize()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _sdk_crypt(dk: DataKey, offset: int, data: bytes) -> bytes:
    """The SDK's own cipher: aligned start, then discard the skipped bytes."""
    cipher = AESCTRCipher()
    aligned = offset - offset % 16
    cipher.new_cipher(dk.key, iv_to_big_int(dk.iv), aligned)
    skip = offset - aligned
    out: bytes = cipher.encrypt(bytes(skip) + data)[skip:]
    return out


# -- known answers -----------------------------------------------------------


def test_nist_f55_encrypt() -> None:
    assert decrypt(NIST_DK, 0, NIST_PLAIN) == NIST_CIPHER


def test_nist_f56_decrypt() -> None:
    assert decrypt(NIST_DK, 0, NIST_CIPHER) == NIST_PLAIN


def test_nist_counter_blocks() -> None:
    for i, expected in enumerate(NIST_INPUT_BLOCKS):
        for within in range(16):
            assert counter_block(NIST_COUNTER, 16 * i + within).hex() == expected


def test_nist_every_split() -> None:
    # Every (offset, end) pair of the 64-byte message, both directions.
    for start in range(65):
        for end in range(start, 65):
            assert decrypt(NIST_DK, start, NIST_PLAIN[start:end]) == NIST_CIPHER[start:end]
            assert decrypt(NIST_DK, start, NIST_CIPHER[start:end]) == NIST_PLAIN[start:end]


def test_nist_sdk_cipher_agrees() -> None:
    # The published vector through the SDK's own AESCTRCipher: proves the SDK
    # uses the whole IV as a 128-bit big-endian counter, as we do.
    assert _sdk_crypt(NIST_DK, 0, NIST_PLAIN) == NIST_CIPHER


# -- counter arithmetic ------------------------------------------------------


def test_counter_carry_across_2_64() -> None:
    iv = bytes(8) + b"\xff" * 8
    assert counter_block(iv, 0) == iv
    assert counter_block(iv, 16) == bytes(7) + b"\x01" + bytes(8)
    assert counter_block(iv, 31) == bytes(7) + b"\x01" + bytes(8)
    assert counter_block(iv, 32) == bytes(7) + b"\x01" + bytes(7) + b"\x01"
    key = os.urandom(32)
    dk = DataKey(key, iv)
    expected = _ecb(
        key, iv + bytes(7) + b"\x01" + bytes(8) + bytes(7) + b"\x01" + bytes(7) + b"\x01"
    )
    assert decrypt(dk, 0, bytes(48)) == expected
    # Starting mid-block right before the carry.
    assert decrypt(dk, 9, bytes(30)) == expected[9:39]
    assert _sdk_crypt(dk, 0, bytes(48)) == expected


def test_counter_wraps_at_2_128() -> None:
    iv = b"\xff" * 16
    assert counter_block(iv, 16) == bytes(16)
    assert counter_block(iv, 16 * 5 + 3) == bytes(15) + b"\x04"
    key = os.urandom(32)
    dk = DataKey(key, iv)
    expected = _ecb(key, b"\xff" * 16 + bytes(16) + bytes(15) + b"\x01")
    assert decrypt(dk, 0, bytes(48)) == expected
    assert decrypt(dk, 15, bytes(2)) == expected[15:17]
    assert decrypt(dk, 16, bytes(32)) == expected[16:]
    # The SDK (pycryptodome Counter.new(128)) wraps the same way.
    assert _sdk_crypt(dk, 0, bytes(48)) == expected


def test_counter_block_matches_formula() -> None:
    for _ in range(200):
        iv = os.urandom(16)
        offset = int.from_bytes(os.urandom(8), "big")
        value = (int.from_bytes(iv, "big") + offset // 16) % 2**128
        assert counter_block(iv, offset) == value.to_bytes(16, "big")


@pytest.mark.parametrize(("iv", "offset"), [(bytes(15), 0), (bytes(17), 0), (bytes(16), -1)])
def test_counter_block_rejects(iv: bytes, offset: int) -> None:
    with pytest.raises(ValueError, match=r"IV must be|offset must be"):
        counter_block(iv, offset)


# -- equivalence with the SDK and with a whole-stream reference ---------------


@settings(max_examples=300, deadline=None, database=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    iv=st.binary(min_size=16, max_size=16),
    data=st.binary(max_size=300),
    offset=st.integers(min_value=0, max_value=2**70),
)
def test_matches_sdk_and_pycryptodome(key: bytes, iv: bytes, data: bytes, offset: int) -> None:
    dk = DataKey(key, iv)
    ours = decrypt(dk, offset, data)
    assert ours == _sdk_crypt(dk, offset, data)
    start = (int.from_bytes(iv, "big") + offset // 16) % 2**128
    ref = AES.new(key, AES.MODE_CTR, counter=Counter.new(128, initial_value=start))
    skip = offset % 16
    assert ours == ref.encrypt(bytes(skip) + data)[skip:]
    assert decrypt(dk, offset, ours) == data


@settings(max_examples=200, deadline=None, database=None)
@given(
    data=st.binary(min_size=0, max_size=600),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=8),
    base=st.integers(min_value=0, max_value=1 << 40),
)
def test_pieces_concatenate(data: bytes, cuts: list[int], base: int) -> None:
    dk = DataKey.generate()
    whole = decrypt(dk, base, data)
    points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    pieces = [decrypt(dk, base + a, data[a:b]) for a, b in itertools.pairwise(points)]
    assert b"".join(pieces) == whole


def test_large_buffer_consistency() -> None:
    dk = DataKey.generate()
    data = os.urandom(8 * 1024 * 1024 + 5)
    whole = decrypt(dk, 3, data)
    chunk = 1024 * 1024 + 7
    pieces = [decrypt(dk, 3 + i, data[i : i + chunk]) for i in range(0, len(data), chunk)]
    assert b"".join(pieces) == whole


def test_crypt_accepts_buffer_types() -> None:
    dk = DataKey.generate()
    data = os.urandom(100)
    expected = decrypt(dk, 5, data)
    assert decrypt(dk, 5, bytearray(data)) == expected
    assert decrypt(dk, 5, memoryview(data)) == expected


# -- DataKey -----------------------------------------------------------------


def test_datakey_fresh_every_call() -> None:
    keys = [DataKey.generate() for _ in range(5000)]
    assert len({k.key for k in keys}) == len(keys)
    assert len({k.iv for k in keys}) == len(keys)
    assert all(len(k.key) == 32 and len(k.iv) == 16 for k in keys)


def test_datakey_repr_hides_bytes() -> None:
    dk = DataKey(bytes(range(32)), bytes(range(100, 116)))
    for text in (repr(dk), str(dk), f"{dk}", repr([dk]), repr({"k": dk})):
        assert dk.key.hex() not in text
        assert dk.iv.hex() not in text
        assert repr(dk.key) not in text
        assert repr(dk.iv) not in text
        assert "\\x" not in text


@pytest.mark.parametrize(
    ("key", "iv"),
    [(bytes(31), bytes(16)), (bytes(33), bytes(16)), (bytes(32), bytes(15)), (bytes(32), b"")],
)
def test_datakey_validates_lengths(key: bytes, iv: bytes) -> None:
    with pytest.raises(ValueError, match=r"DataKey\.(key|iv) must be"):
        DataKey(key, iv)


def test_datakey_copies_mutable_input() -> None:
    raw = bytearray(32)
    dk = DataKey(raw, bytearray(16))  # type: ignore[arg-type]
    raw[0] = 1
    assert dk.key == bytes(32)
    assert isinstance(dk.key, bytes)
    with pytest.raises(TypeError):
        DataKey("k" * 32, bytes(16))  # type: ignore[arg-type]
