"""Small in-place writes (issue 17 target 5): what each one costs the event loop.

A 4 KiB write into a file's open head takes the head's lock without a trip
through trio's scheduler when nobody holds it (and still waits when someone
does), and a file rewritten over and over at its maximum dirty age does not
push one write-back deadline per write. On MemoryStore, no latency.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.fs.core import Filesystem
from tests.testlib import idle_memory_fs

ROOT = 1
SIZE = 1 << 20
BLOCK = 4096


@pytest.fixture
async def mem_fs(codec: EnvelopeCodec, tmp_path: Path) -> AsyncIterator[Filesystem]:
    async with idle_memory_fs(codec, tmp_path / "cache") as fs:
        yield fs


async def _uploaded_file(fs: Filesystem, data: bytes) -> int:
    """A file holding ``data``, in COS, open read-write (its handle)."""
    fh, _ = await fs.create(ROOT, b"db", 0o644, os.O_RDWR | os.O_CREAT, 0, 0)
    await fs.write(fh, 0, data)
    await fs.fsync(fh, False)
    return fh


async def _read_all(fs: Filesystem, fh: int, size: int) -> bytes:
    return bytes(await fs.read(fh, 0, size))


async def test_uncontended_small_writes_do_not_yield_to_the_scheduler(
    mem_fs: Filesystem,
) -> None:
    fs = mem_fs
    want = bytearray(os.urandom(SIZE))
    fh = await _uploaded_file(fs, bytes(want))
    # The first write after the upload starts a new head (that may wait).
    await fs.write(fh, 0, bytes(want[:BLOCK]))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.lowlevel.checkpoint()  # the ticker has started
        start = ticks
        for i in range(64):
            off = (i * 37 % (SIZE // BLOCK)) * BLOCK
            block = os.urandom(BLOCK)
            want[off : off + BLOCK] = block
            assert await fs.write(fh, off, block) == BLOCK
        # No other task ran while 64 writes were served.
        assert ticks == start
        nursery.cancel_scope.cancel()
    assert await _read_all(fs, fh, SIZE) == bytes(want)
    await fs.fsync(fh, False)
    await fs.release(fh)


async def test_a_write_waits_for_the_head_lock_held_elsewhere(mem_fs: Filesystem) -> None:
    fs = mem_fs
    want = bytearray(os.urandom(SIZE))
    fh = await _uploaded_file(fs, bytes(want))
    await fs.write(fh, 0, bytes(want[:BLOCK]))
    node = fs.files.handles.get(fh).node
    head = node.as_file.head
    if head is None:
        raise AssertionError("no head after a write")
    done = trio.Event()
    block = os.urandom(BLOCK)

    async def writer() -> None:
        await fs.write(fh, 8 * BLOCK, block)
        done.set()

    async with trio.open_nursery() as nursery:
        async with head.lock:
            log = head.log_size
            nursery.start_soon(writer)
            await trio.testing.wait_all_tasks_blocked()
            # Parked on the lock: nothing appended while it is held here.
            assert not done.is_set()
            assert head.log_size == log
        await done.wait()
    want[8 * BLOCK : 9 * BLOCK] = block
    assert await _read_all(fs, fh, SIZE) == bytes(want)
    await fs.release(fh)


async def test_rewrites_at_the_maximum_age_push_no_deadline_each(mem_fs: Filesystem) -> None:
    fs = mem_fs
    fh = await _uploaded_file(fs, os.urandom(SIZE))
    wb = fs.writeback
    for i in range(200):
        await fs.write(fh, (i * 7 % (SIZE // BLOCK)) * BLOCK, os.urandom(BLOCK))
    # One deadline (the file's maximum dirty age), not one per write.
    assert len(wb._heap) <= 2, len(wb._heap)
    assert wb.queued == 1
    # And it still goes up: fsync, and then nothing is left queued.
    await fs.fsync(fh, False)
    await fs.release(fh)
    assert wb.queued == 0
