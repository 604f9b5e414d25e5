"""ObjectContent (cosencfs/cache/content.py): fetched bytes are stored once, a
produced range is encrypted once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cosencfs.cache.content import ObjectContent, Source
from cosencfs.crypto.ctr import DataKey, decrypt, encrypt


def file_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def copy_of(tmp_path: Path, dk: DataKey, size: int, *, plaintext: bool = False) -> ObjectContent:
    source = Source("obj", "etag", None if plaintext else dk, size)
    return ObjectContent("v1", str(tmp_path / "v1"), dk, size, source)


async def test_store_fetched_fills_each_range_once(tmp_path: Path) -> None:
    dk = DataKey.generate()
    plain = os.urandom(1000)
    cipher = encrypt(dk, 0, plain)  # what COS holds
    v = copy_of(tmp_path, dk, len(plain))
    try:
        v.store_fetched(100, cipher[100:300])
        assert v.present.missing(0, 1000) == [(0, 100), (300, 1000)]
        assert v.cached_bytes == 200
        assert v.account[0] == 200
        # Bytes already present are never written again (here: zeros over them).
        v.store_fetched(200, b"\0" * 100 + cipher[300:400])
        assert v.read_plain(100, 200) == plain[100:300]
        assert v.present.missing(0, 1000) == [(0, 100), (400, 1000)]
        assert v.account[0] == 300
        # Bytes past the object's size are dropped.
        v.store_fetched(900, cipher[900:] + b"junk")
        assert v.cached_bytes == 400
        assert not v.present.contains(0, 1000)
        v.store_fetched(0, cipher)
        assert v.complete
        assert v.read_plain(0, 1000) == plain
        # The file holds the object's own ciphertext, not plaintext.
        assert file_bytes(v.path) == cipher
    finally:
        v.close()


async def test_plaintext_source_is_stored_under_the_copys_own_key(tmp_path: Path) -> None:
    dk = DataKey.generate()  # the throw-away key of the copy
    plain = os.urandom(500)
    v = copy_of(tmp_path, dk, len(plain), plaintext=True)
    try:
        assert v.plaintext_source
        v.store_fetched(0, plain)
        on_disk = file_bytes(v.path)
        assert on_disk != plain
        assert decrypt(dk, 0, on_disk) == plain
        assert v.read_plain(123, 45) == plain[123:168]
    finally:
        v.close()


async def test_produce_refuses_a_range_twice(tmp_path: Path) -> None:
    dk = DataKey.generate()
    v = ObjectContent("up", str(tmp_path / "up"), dk, 1000, None)
    try:
        assert v.limit == 0  # nothing to fetch: every byte is produced
        v.produce(0, b"a" * 500)
        with pytest.raises(ValueError, match="produced before"):
            v.produce(0, b"b" * 500)
        with pytest.raises(ValueError, match="produced before"):
            v.produce(499, b"b" * 10)  # overlapping by one byte
        v.produce(500, b"c" * 500)
        assert v.complete
        assert v.read_plain(0, 1000) == b"a" * 500 + b"c" * 500
    finally:
        v.close()


async def test_closed_copy_is_discarded_once(tmp_path: Path) -> None:
    v = copy_of(tmp_path, DataKey.generate(), 10)
    v.close()
    v.close()  # no second os.close of the descriptor
    assert v.discarded
    # A copy is made with O_EXCL: never reuses a file it did not create.
    with pytest.raises(FileExistsError):
        copy_of(tmp_path, DataKey.generate(), 10)
