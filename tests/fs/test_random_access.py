"""Random access: once a handle's reads stop following each other, a file that
fits the cache is fetched whole in large parallel GETs, and each reader waits
only for the part holding its range; a file too large for that is read chunk
by chunk as before."""

from __future__ import annotations

import os
import random

import trio

from cosencfs.fs.core import Filesystem
from cosencfs.fs.reads import RANDOM_AFTER
from cosencfs.store.cos import CosStore
from tests.fs.test_filesystem import write_file
from tests.testlib import FsFactory

ROOT = 1
MIB = 1 << 20


async def _random_reads(fs: Filesystem, name: str, data: bytes, n: int) -> None:
    ino = (await fs.lookup(ROOT, name.encode())).ino
    fh, _ = await fs.open(ino, os.O_RDONLY)
    rng = random.Random(3)
    for _ in range(n):
        off = rng.randrange(0, len(data) - 4096)
        assert await fs.read(fh, off, 4096) == data[off : off + 4096]
    await fs.release(fh)


def _gets(store: CosStore) -> int:
    return store.counters.snapshot().requests.get("GetObject", 0)


async def test_random_reads_of_a_file_that_fits_fetch_it_whole_once(
    make_fs: FsFactory, store: CosStore
) -> None:
    data = os.urandom(24 * MIB)
    await write_file(await make_fs(), ROOT, "db", data)
    fs = await make_fs()
    before = _gets(store)
    await _random_reads(fs, "db", data, 200)
    fetcher = fs.ctx.cache.fetcher
    with trio.fail_after(30):
        for v in list(fs.ctx.cache.versions.values()):
            for inf in list(v.inflight):
                await inf.done.wait()
    # The reads before the pattern showed each fetched one 64 KiB chunk; then
    # the whole file once, in 8 MiB GETs: not a GET per read.
    assert fetcher.fetched_bytes <= len(data) + RANDOM_AFTER * 64 * 1024
    assert _gets(store) - before <= RANDOM_AFTER + 1 + len(data) // (8 * MIB) + 1


async def test_random_reads_of_a_file_larger_than_the_cache_share_stay_chunked(
    make_fs: FsFactory,
) -> None:
    data = os.urandom(8 * MIB)
    await write_file(await make_fs(), ROOT, "big", data)
    fs = await make_fs()
    fs.ctx.cache.limit_bytes = 8 * MIB  # the file is more than half of it
    await _random_reads(fs, "big", data, 20)
    assert fs.ctx.cache.fetcher.fetched_bytes <= 20 * 64 * 1024 * 2
