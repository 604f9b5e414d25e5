"""DirtyLayer logs (cosencfs/cache/dirtylog.py): records, truncates, replay after a
restart, and refusal of anything altered."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cosencfs.cache.dirtylog import HEADER_SIZE, OVERHEAD, RECORD_MAX, DirtyLayer, new_cache_key
from cosencfs.cache.layout import new_vid
from cosencfs.errors import CacheIntegrityError


def new_layer(tmp_path: Path, vid: str | None = None, key: bytes | None = None) -> DirtyLayer:
    vid = vid or new_vid()
    return DirtyLayer(
        vid,
        str(tmp_path / f"{vid}.log"),
        key or new_cache_key(),
        size=0,
        limit=0,
        below=None,
        source=None,
    )


def reopen(layer: DirtyLayer, *, key: bytes | None = None) -> DirtyLayer:
    """The layer's log opened again, as recovery does (not replayed yet)."""
    return DirtyLayer(
        layer.vid,
        layer.path,
        key or layer.cache_key,
        size=layer.size,
        limit=layer.limit,
        below=None,
        source=None,
        create=False,
    )


def replayed(layer: DirtyLayer) -> DirtyLayer:
    again = reopen(layer)
    again.replay(layer.log_size)
    return again


def write(layer: DirtyLayer, offset: int, data: bytes) -> None:
    refs, n = layer.append_write(offset, data)
    layer.apply_write(refs, n)


def truncate(layer: DirtyLayer, size: int) -> None:
    blob = layer.encode_truncate(size)
    layer.append(blob)
    layer.apply_truncate(size, len(blob))


def contents(layer: DirtyLayer) -> dict[int, bytes]:
    """What each segment of the layer reads as, by start offset."""
    out = {}
    for seg in layer.segments:
        rec = layer.read_record(seg.rec)
        out[seg.start] = rec[seg.start - seg.rec.offset : seg.end - seg.rec.offset]
    return out


def file_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def flip(path: str, pos: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 1]))


async def test_records_rewrites_and_truncates_replay_to_the_same_state(tmp_path: Path) -> None:
    layer = new_layer(tmp_path)
    assert file_bytes(layer.path) is None  # no log until the first record
    big = os.urandom(RECORD_MAX + 100)
    write(layer, 0, big)  # two records
    write(layer, 10, b"rewritten")  # a new record, never in place
    truncate(layer, 50_000)
    write(layer, 60_000, b"tail")
    assert layer.size == 60_004
    want = contents(layer)
    assert want[0] == big[:10]
    assert want[10] == b"rewritten"
    assert want[19] == big[19:50_000]
    assert want[60_000] == b"tail"
    # Plaintext never reaches the log file.
    raw = file_bytes(layer.path)
    assert raw is not None
    assert b"rewritten" not in raw
    assert big[:4096] not in raw
    layer.close()
    again = replayed(layer)
    try:
        assert [(s.start, s.end) for s in again.segments] == [
            (s.start, s.end) for s in layer.segments
        ]
        assert contents(again) == want
        assert again.log_size == layer.log_size
    finally:
        again.close()


async def test_replay_stops_at_the_recorded_length(tmp_path: Path) -> None:
    layer = new_layer(tmp_path)
    write(layer, 0, b"kept")
    recorded = layer.log_size
    write(layer, 0, b"LOST")  # after the journal record: not acknowledged
    layer.close()
    again = reopen(layer)
    again.replay(recorded)
    try:
        assert contents(again) == {0: b"kept"}
    finally:
        again.close()


async def test_altered_data_record_is_refused(tmp_path: Path) -> None:
    layer = new_layer(tmp_path)
    write(layer, 0, b"x" * 1000)
    flip(layer.path, HEADER_SIZE + 100)  # in the sealed body
    (seg,) = list(layer.segments)
    with pytest.raises(CacheIntegrityError, match="does not verify"):
        layer.read_record(seg.rec)
    layer.close()


async def test_altered_header_or_truncate_record_is_refused_on_replay(tmp_path: Path) -> None:
    layer = new_layer(tmp_path)
    write(layer, 0, b"x" * 100)
    mark = layer.log_size
    truncate(layer, 10)
    layer.close()
    flip(layer.path, mark + HEADER_SIZE + 2)  # the truncate record's nonce
    with pytest.raises(CacheIntegrityError, match="does not verify"):
        replayed(layer)
    flip(layer.path, mark + HEADER_SIZE + 2)  # back as it was
    flip(layer.path, 0)  # the first record's magic
    with pytest.raises(CacheIntegrityError, match="no valid record"):
        replayed(layer)


async def test_records_are_bound_to_their_layer_and_key(tmp_path: Path) -> None:
    layer = new_layer(tmp_path)
    write(layer, 0, b"secret bytes")
    layer.close()
    (seg,) = list(layer.segments)
    # The same file under another layer id (a swapped log) does not verify.
    other = new_layer(tmp_path, vid=new_vid(), key=layer.cache_key)
    other.fd = os.open(layer.path, os.O_RDONLY)
    try:
        with pytest.raises(CacheIntegrityError):
            other.read_record(seg.rec)
    finally:
        other.close()
    # Nor under another key.
    wrong = reopen(layer, key=new_cache_key())
    try:
        with pytest.raises(CacheIntegrityError):
            wrong.read_record(seg.rec)
    finally:
        wrong.close()


async def test_short_log_and_closed_layer_are_refused(tmp_path: Path) -> None:
    layer = new_layer(tmp_path)
    write(layer, 0, b"y" * 100)
    layer.close()
    with pytest.raises(CacheIntegrityError, match="closed"):
        layer.append(layer.encode_truncate(0))
    again = reopen(layer)
    try:
        with pytest.raises(CacheIntegrityError):
            again.replay(layer.log_size + 10)  # the journal says more than the file has
    finally:
        again.close()


async def test_a_layer_makes_its_aes_gcm_context_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small writes do not pay for a key schedule each: one AES-GCM context per layer."""
    made = 0
    real = AESGCM

    def counting(key: bytes) -> AESGCM:
        nonlocal made
        made += 1
        return real(key)

    monkeypatch.setattr("cosencfs.crypto.ctr.AESGCM", counting)
    layer = new_layer(tmp_path)
    try:
        for i in range(50):
            write(layer, i * 4096, os.urandom(4096))
        write(layer, 0, os.urandom(2 * RECORD_MAX + 7))  # three records in one append
        truncate(layer, 3 * RECORD_MAX)
        assert len(contents(layer)) > 0  # every live record read back and verified
    finally:
        layer.close()
    assert made == 1


async def test_records_of_one_append_lie_back_to_back(tmp_path: Path) -> None:
    layer = new_layer(tmp_path)
    data = os.urandom(2 * RECORD_MAX + 7)
    try:
        refs, n = layer.append_write(100, data)
        assert n == len(data) + 3 * OVERHEAD
        assert [(r.pos, r.offset, r.length) for r in refs] == [
            (0, 100, RECORD_MAX),
            (RECORD_MAX + OVERHEAD, 100 + RECORD_MAX, RECORD_MAX),
            (2 * (RECORD_MAX + OVERHEAD), 100 + 2 * RECORD_MAX, 7),
        ]
        layer.apply_write(refs, n)
        assert len(file_bytes(layer.path) or b"") == n
        got = b"".join(layer.read_record(r) for r in refs)
        assert got == data
    finally:
        layer.close()
