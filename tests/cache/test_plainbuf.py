"""PlainBuffers and decrypt_cells (cosencfs/cache/plainbuf.py): a sequential
reader's pieces decrypted into reused buffers, reused only once no view of
them is alive."""

from __future__ import annotations

import os

from cosencfs.cache.plainbuf import PlainBuffers, decrypt_cells, new_buffer
from cosencfs.cache.plainhold import CELL
from cosencfs.crypto.ctr import DataKey, decrypt, encrypt

KIB = 1024


def test_a_buffer_is_reused_only_once_no_view_of_it_is_alive() -> None:
    dk = DataKey.generate()
    pool = PlainBuffers(size=64 * KIB, limit=2, keep=1)
    assert pool.lease(10) is None  # none idle: the job makes one

    def job() -> list[tuple[int, memoryview | bytes]]:
        # A piece decrypted into what the pool leases, or a new buffer, then adopted.
        blocks = decrypt_cells(dk, 0, memoryview(bytes(100)), pool.lease(100), 64 * KIB)
        pool.adopt(blocks)
        return blocks

    a = job()
    b = job()  # the first one's blocks are alive: another buffer
    first = a[0][1]
    assert isinstance(first, memoryview)
    assert first.obj is not b[0][1].obj  # type: ignore[union-attr]
    assert (pool.count, pool.made) == (2, 2)
    buf = first.obj
    kept = first[10:20]  # a slice a caller kept (a block being replied from)
    del a, first
    c = job()
    assert c[0][1].obj is not buf  # type: ignore[union-attr]  # the slice still holds it
    assert pool.spilled == 1  # the pool is full: that buffer is not kept
    del kept, c
    d = job()
    assert d[0][1].obj is buf  # type: ignore[union-attr]  # nothing refers to it now: reused
    assert (pool.made, pool.reused, pool.spilled) == (2, 1, 1)
    assert pool.lease(64 * KIB + 1) is None  # larger than a buffer
    del b, d
    pool.trim()
    assert pool.count == 1  # ``keep`` idle ones stay


def test_decrypt_cells_match_decrypt_and_never_cross_a_cell() -> None:
    dk = DataKey.generate()
    start = 3 * CELL - 64 * KIB  # a piece starting inside a cell
    plain = os.urandom(2 * CELL + 12_345)
    cipher = memoryview(encrypt(dk, start, plain))
    for out in (memoryview(bytearray(4 * CELL)), None):
        blocks = decrypt_cells(dk, start, cipher, out, 4 * CELL)
        assert [s for s, _ in blocks] == [start, 3 * CELL, 4 * CELL]
        for s, block in blocks:
            assert (s + len(block) - 1) // CELL == s // CELL
            assert bytes(block) == plain[s - start : s - start + len(block)]
            assert bytes(block) == decrypt(dk, s, cipher[s - start : s - start + len(block)])
        views = [b for _, b in blocks if isinstance(b, memoryview) and b.readonly]
        assert len(views) == len(blocks)  # read-only views, of one buffer
        assert len({id(v.obj) for v in views}) == 1


def test_a_buffer_is_made_once_and_never_reallocated_by_the_probe() -> None:
    """Made with room for the probe's byte: no probe grows it (the first
    append to a bytearray of exactly its size reallocated and copied it,
    leaving an eighth more memory allocated)."""
    pool = PlainBuffers(size=256 * KIB)
    buf = new_buffer(256 * KIB)
    pool.adopt([(0, memoryview(buf)[:10])])
    for _ in range(3):
        view = pool.lease(10)
        assert view is not None
        assert view.obj is buf
        del view
        assert buf.__alloc__() == 256 * KIB + 2
    assert (pool.made, pool.reused) == (1, 3)
