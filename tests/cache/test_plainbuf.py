"""PlainBuffers and decrypt_cells (cosencfs/cache/plainbuf.py): a sequential
reader's pieces decrypted into reused buffers, reused only once no view of
them is alive."""

from __future__ import annotations

import os

from cosencfs.cache.plainbuf import PlainBuffers, decrypt_cells
from cosencfs.cache.plainhold import CELL
from cosencfs.crypto.ctr import DataKey, decrypt, encrypt

KIB = 1024


def test_a_buffer_is_reused_only_once_no_view_of_it_is_alive() -> None:
    pool = PlainBuffers(size=64 * KIB, limit=3, keep=1)
    a = pool.lease(64 * KIB)
    b = pool.lease(10)
    assert a is not None
    assert b is not None
    assert (len(a), len(b)) == (64 * KIB, 10)
    assert a.obj is not b.obj  # the first one's view is alive: another buffer
    first = a.obj
    kept = a[100:200]  # a slice a caller kept (a block being replied from)
    del a
    c = pool.lease(5)
    assert c is not None
    assert c.obj is not first  # the slice still holds it
    del kept
    d = pool.lease(5)
    assert d is not None
    assert d.obj is first  # nothing refers to it now: reused
    assert (pool.made, pool.reused, pool.spilled) == (3, 1, 0)
    # Every buffer is in use and the pool is full: new bytes instead.
    assert pool.lease(5) is None
    assert pool.lease(64 * KIB + 1) is None  # larger than a buffer
    assert pool.spilled == 2
    del b, c, d
    pool.trim()
    assert pool.count == 1  # ``keep`` idle ones stay


def test_decrypt_cells_match_decrypt_and_never_cross_a_cell() -> None:
    dk = DataKey.generate()
    start = 3 * CELL - 64 * KIB  # a piece starting inside a cell
    plain = os.urandom(2 * CELL + 12_345)
    cipher = memoryview(encrypt(dk, start, plain))
    pool = PlainBuffers(size=4 * CELL)
    for out in (pool.lease(len(cipher)), None):
        blocks = decrypt_cells(dk, start, cipher, out)
        assert [s for s, _ in blocks] == [start, 3 * CELL, 4 * CELL]
        for s, block in blocks:
            assert (s + len(block) - 1) // CELL == s // CELL
            assert bytes(block) == plain[s - start : s - start + len(block)]
            assert bytes(block) == decrypt(dk, s, cipher[s - start : s - start + len(block)])
        kinds = {type(b) for _, b in blocks}
        assert kinds == ({memoryview} if out is not None else {bytes})
        if out is not None:
            assert all(isinstance(b, memoryview) and b.readonly for _, b in blocks)


def test_a_buffer_is_made_once_and_never_reallocated_by_the_probe() -> None:
    """Made with room for the probe's byte: no probe grows it (the first
    append to a bytearray of exactly its size reallocated and copied it,
    leaving an eighth more memory allocated)."""
    pool = PlainBuffers(size=256 * KIB)
    for _ in range(3):
        view = pool.lease(10)
        assert view is not None
        buf = view.obj
        assert isinstance(buf, bytearray)
        del view
        assert buf.__alloc__() == 256 * KIB + 2
    assert (pool.made, pool.reused) == (1, 2)
