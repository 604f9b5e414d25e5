"""The cache stays near its limit while large files are open and read.

Clean ranges of copies in use are evictable (cosencfs/cache/evict.py): a
sequential reader of a file several times the limit leaves behind it only
what fits, and what it reads is still right; only the range being read, the
fetches in flight and one read-ahead window are kept beyond the limit.
"""

from __future__ import annotations

import os
import random

import trio

from cosencfs.fs.core import Filesystem
from tests.fs.test_filesystem import write_file
from tests.testlib import FsFactory

ROOT = 1
MIB = 1 << 20
READ = 128 * 1024


async def _open(fs: Filesystem, name: str) -> int:
    ino = (await fs.lookup(ROOT, name.encode())).ino
    fh, _ = await fs.open(ino, os.O_RDONLY)
    return fh


async def test_sequential_read_of_a_file_4x_the_limit(make_fs: FsFactory) -> None:
    data = os.urandom(16 * MIB)
    await write_file(await make_fs(), ROOT, "big", data)
    window = 2 * MIB
    fs = await make_fs(readahead_max=window)
    cache = fs.ctx.cache
    cache.limit_bytes = 4 * MIB
    fh = await _open(fs, "big")
    got = bytearray()
    peak = 0
    for off in range(0, len(data), READ):
        got += await fs.read(fh, off, READ)
        peak = max(peak, cache.usage())
    assert bytes(got) == data
    # The limit, plus the read-ahead window and the fetch topping it up, plus
    # what may arrive between two evictions (the slack); not the whole file.
    assert peak <= cache.limit_bytes + 2 * window + cache._slack, peak
    assert cache.ranges.dropped >= len(data) - cache.limit_bytes - 2 * window - cache._slack
    # Read again while still open: dropped ranges are fetched again, and right.
    again = bytearray()
    for off in range(0, len(data), READ):
        again += await fs.read(fh, off, READ)
    assert bytes(again) == data
    await fs.release(fh)


async def test_random_reads_by_two_handles_stay_right_under_pressure(make_fs: FsFactory) -> None:
    """Two readers at random places of one open copy at once, the cache far
    smaller than the file and eviction running between their steps: it never
    drops bytes a read is using (they would read as garbage), so every read
    returns the file's bytes."""
    data = os.urandom(8 * MIB)
    await write_file(await make_fs(), ROOT, "r", data)
    fs = await make_fs(readahead_max=MIB)
    cache = fs.ctx.cache
    cache.limit_bytes = MIB
    handles = [await _open(fs, "r"), await _open(fs, "r")]
    assert await fs.read(handles[0], 0, 1) == data[:1]
    node = fs.ctx.table.get((await fs.lookup(ROOT, b"r")).ino)
    assert node is not None
    assert node.as_file.clean is not None
    copy = node.as_file.clean
    copy.pins += 1  # as if a third reader were always mid-read: ranges, not the copy, go

    async def reader(fh: int, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(100):
            off = rng.randrange(0, len(data) - 4096)
            n = rng.choice([1, 4096, 70_000, 300_000])
            assert await fs.read(fh, off, n) == data[off : off + n]
            cache.evict()

    async with trio.open_nursery() as nursery:
        for i, fh in enumerate(handles):
            nursery.start_soon(reader, fh, i)
    assert not copy.discarded
    assert cache.ranges.dropped > 0
    copy.pins -= 1
    for fh in handles:
        await fs.release(fh)
