"""Audit of the reused decryption buffers (cache/plainbuf.py, branch seqr2):
several sequential readers of different files at once, with a pool of two
buffers and a small hold budget, readers that close half-way and start
again, reads cancelled while their piece is on its way, and blocks kept by
their callers.  Every byte any read returned must be its own file's, when
it was returned and after everything else was read (a reused buffer is
never written while a view of it is alive)."""

from __future__ import annotations

import os
import random

import trio

from cosencfs.cache.plainbuf import PlainBuffers
from tests.fs.test_readahead import MIB, RigFactory, rig_for

__all__ = ["rig_for"]  # (the fixture, imported for pytest)

FILES = 4
SIZE = 20 * MIB + 4321


async def test_concurrent_readers_of_different_files_never_see_each_others_bytes(
    rig_for: RigFactory,
) -> None:
    files = {f"f{i}": os.urandom(SIZE) for i in range(FILES)}
    rig = await rig_for(files, readahead_max=4 * MIB)
    rig.fetcher.plainbufs = pool = PlainBuffers(limit=2, keep=1)
    rig.fetcher.hold.budget = 6 * MIB
    kept: list[tuple[str, int, memoryview | bytes]] = []
    wrong: list[str] = []
    rng = random.Random(7)

    async def reader(name: str, seed: int) -> None:
        r = random.Random(seed)
        data = files[name]
        fh = await rig.open(name)
        off = 0
        while off < len(data):
            if r.random() < 0.05:
                # The reader closes half-way (its read-ahead cancelled, its
                # blocks forgotten) and opens the file again.
                await rig.fs.release(fh)
                fh = await rig.open(name)
            if r.random() < 0.05:
                # A read cancelled while its bytes are on the way (an
                # interrupted read(2)): the next read asks again.
                with trio.move_on_after(0.001):
                    await rig.fs.read(fh, off, MIB)
                continue
            got = await rig.fs.read(fh, off, MIB)
            if bytes(got) != data[off : off + MIB]:
                wrong.append(f"{name} at {off}")
            if isinstance(got, memoryview) and r.random() < 0.3:
                kept.append((name, off, got))  # its buffer must stay out of use
            off += MIB
            await trio.sleep(r.random() * 0.002)
        await rig.fs.release(fh)

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for i, name in enumerate(files):
                nursery.start_soon(reader, name, rng.randrange(1 << 30) + i)
    await rig.settle()
    assert not wrong, wrong[:5]
    assert kept, "no read was served from a reused buffer"
    stale = [
        f"{name} at {off}"
        for name, off, block in kept
        if bytes(block) != files[name][off : off + MIB]
    ]
    assert not stale, stale[:5]
    assert pool.reused > 0
