"""A sequential reader served from reused decryption buffers (cache/plainbuf.py),
at the Filesystem level on the in-memory store (the rig of test_readahead.py):
the bytes equal the file, a buffer is reused across the pieces, a block a
caller still holds is never overwritten, and a chunk altered in COS still
fails its read before any of its piece reaches the reader."""

from __future__ import annotations

import os

import pytest

from cosencfs.cache.plainbuf import PlainBuffers
from cosencfs.crypto.integrity import CHUNK_SIZE
from cosencfs.errors import IntegrityError
from tests.fs.test_readahead import MIB, RigFactory, _read_all, rig_for

__all__ = ["rig_for"]  # (the fixture, imported for pytest)


async def test_sequential_read_reuses_its_decryption_buffers(rig_for: RigFactory) -> None:
    data = os.urandom(40 * MIB + 777)
    rig = await rig_for({"seq": data}, readahead_max=8 * MIB)
    pool = rig.fetcher.plainbufs
    fh = await rig.open("seq")
    assert await _read_all(rig, fh, len(data)) == data
    await rig.settle()
    served = pool.made + pool.reused
    # Every piece after the first foreground GET was decrypted into a pool
    # buffer (before: into new bytes per MiB), and most into one used before.
    assert served >= len(rig.store.gets) - 2, (served, len(rig.store.gets))
    assert pool.spilled == 0
    assert pool.reused > pool.made, (pool.made, pool.reused)
    assert rig.fetcher.hold.held == 0
    await rig.fs.release(fh)


async def test_a_block_kept_by_its_caller_is_never_overwritten(rig_for: RigFactory) -> None:
    """Two buffers for a whole read: the kept block's buffer stays out of use
    (pieces beyond the pool go to new bytes), and what the caller kept still
    reads as the file's bytes after everything else was read."""
    data = os.urandom(24 * MIB)
    rig = await rig_for({"seq": data}, readahead_max=4 * MIB)
    rig.fetcher.plainbufs = PlainBuffers(limit=2)
    fh = await rig.open("seq")
    kept: list[tuple[int, memoryview]] = []
    for off in range(0, len(data), MIB):
        got = await rig.fs.read(fh, off, MIB)
        assert got == data[off : off + MIB]
        if isinstance(got, memoryview) and not kept:
            kept.append((off, got))  # the first block served from a pool buffer
    await rig.settle()
    assert kept
    assert kept[0][0] < 8 * MIB
    off, block = kept[0]
    assert block == data[off : off + MIB]
    pool = rig.fetcher.plainbufs
    assert pool.reused > 0
    assert pool.spilled > 0
    await rig.fs.release(fh)


async def test_an_altered_chunk_in_the_window_fails_and_reaches_no_reader(
    rig_for: RigFactory,
) -> None:
    data = os.urandom(24 * MIB)
    rig = await rig_for({"seq": data}, readahead_max=8 * MIB)
    bad = 12 * MIB // CHUNK_SIZE + 3
    get = rig.store.get

    async def altered(key: str, start: int = 0, end: int | None = None, **kw: object) -> bytes:
        body = await get(key, start, end, **kw)  # type: ignore[arg-type]
        at = bad * CHUNK_SIZE + 9 - start
        if key == "seq" and 0 <= at < len(body):
            flipped = bytearray(body)
            flipped[at] ^= 1
            return bytes(flipped)
        return body

    rig.store.get = altered  # type: ignore[method-assign]
    fh = await rig.open("seq")
    for off in range(0, 12 * MIB, MIB):
        assert await rig.fs.read(fh, off, MIB) == data[off : off + MIB]
    await rig.settle()
    v = next(iter(rig.fs.ctx.cache.versions.values()))
    # Nothing of the piece holding the bad chunk was decrypted for the reader.
    assert not any(s <= bad * CHUNK_SIZE < s + len(b) for s, b in (v.plain or {}).items())
    with pytest.raises(IntegrityError):
        await rig.fs.read(fh, 12 * MIB, MIB)
    assert rig.fetcher.chunk_failures >= 1
    await rig.fs.release(fh)
