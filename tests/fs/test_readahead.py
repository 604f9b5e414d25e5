"""Read-ahead at the Filesystem level, on the in-memory store with latency.

A sequential reader's window doubles up to ``readahead_max`` and is fetched
in several GETs at once; a reader that moves away from its window cancels
the GETs still running there, so the bytes fetched and never read stay
within one window; reads arriving a little out of order cancel nothing.
Random access to a file that fits the cache fetches it whole, the part
holding the reader's range first, and the reader is served once that part
is in, not after the whole object.

The store (``Watched``) records every GET and can hold GETs of chosen ranges
until released (or cancelled), and limit how many run at once (as the
transport's connections do): the tests count requests and bytes, never time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from cosencfs.cache import fetch
from cosencfs.cache.direct import DIRECT
from cosencfs.cache.manager import CacheManager
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.fs.core import Filesystem
from cosencfs.fs.handles import Readahead
from cosencfs.fs.reads import PIECES, RANDOM_AFTER
from cosencfs.store.memory import MemoryStore
from tests.fs.test_filesystem import write_file
from tests.testlib import fs_options

ROOT = 1
KIB = 1024
MIB = 1 << 20
READ = 128 * KIB
LATENCY_MS = 20


class Watched(MemoryStore):
    """A MemoryStore whose GETs are recorded, and held while ``hold`` says so."""

    def __init__(self) -> None:
        super().__init__()
        #: GETs asked for (a CosStore counts them before taking a connection),
        #: and those sent, by range.
        self.asked = 0
        self.gets: list[tuple[int, int]] = []
        self.running = 0
        self.most_running = 0
        #: GETs waiting at the gate now, and those cancelled there.
        self.held = 0
        self.cancelled = 0
        self.hold: Callable[[int, int], bool] = lambda start, end: False
        self.gate = trio.Event()
        self.connections = trio.CapacityLimiter(1000)

    async def get(
        self, key: str, start: int = 0, end: int | None = None, *, if_match: str | None = None
    ) -> bytes:
        self.asked += 1
        async with self.connections:
            stop = end if end is not None else -1
            self.gets.append((start, stop))
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            try:
                if self.hold(start, stop):
                    self.held += 1
                    try:
                        await self.gate.wait()
                    except trio.Cancelled:
                        self.cancelled += 1
                        raise
                    finally:
                        self.held -= 1
                return await super().get(key, start, end, if_match=if_match)
            finally:
                self.running -= 1


class Rig:
    def __init__(self, fs: Filesystem, store: Watched) -> None:
        self.fs = fs
        self.store = store
        self.fetcher = fs.ctx.cache.fetcher

    async def open(self, name: str) -> int:
        ino = (await self.fs.lookup(ROOT, name.encode())).ino
        fh, _ = await self.fs.open(ino, os.O_RDONLY)
        return fh

    async def settle(self) -> None:
        """Wait until no fetch is in flight."""
        with trio.fail_after(30):  # a guard against a hang, not a measurement
            for v in list(self.fs.ctx.cache.versions.values()):
                while v.inflight:
                    await v.inflight[0].done.wait()


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def rig_for(tmp_path: Path, codec: EnvelopeCodec) -> AsyncIterator[RigFactory]:
    store = Watched()
    caches: list[CacheManager] = []
    async with trio.open_nursery() as nursery:

        async def make(files: dict[str, bytes], **kw: object) -> Rig:
            writer_cache = CacheManager(tmp_path / "writer", store, limit_bytes=1 << 30)
            caches.append(writer_cache)
            writer = Filesystem(store, codec, writer_cache, fs_options())
            await writer.start(nursery)
            for name, data in files.items():
                await write_file(writer, ROOT, name, data)
            # The reader is a fresh mount (cold cache) of a store 20 ms away.
            cache = CacheManager(tmp_path / "reader", store, limit_bytes=1 << 30)
            caches.append(cache)
            fs = Filesystem(store, codec, cache, fs_options(**kw))
            await fs.start(nursery)
            store.faults.latency_ms = LATENCY_MS
            store.gets.clear()
            store.most_running = 0
            return Rig(fs, store)

        try:
            yield make
        finally:
            store.gate.set()
            nursery.cancel_scope.cancel()
    for c in caches:
        c.close()


async def test_sequential_window_doubles_to_its_bound_in_parallel_gets(rig_for: RigFactory) -> None:
    data = os.urandom(24 * MIB)
    rig = await rig_for({"seq": data}, readahead_max=8 * MIB)
    fh = await rig.open("seq")
    got = bytearray()
    for off in range(0, len(data), READ):
        got += await rig.fs.read(fh, off, READ)
    assert bytes(got) == data
    await rig.settle()
    gets = rig.store.gets
    # Every byte once, nothing past the end.
    assert rig.fetcher.fetched_bytes == len(data)
    # The window doubled 1, 2, 4, 8 MiB and stopped there: its top-ups (half
    # a window) are GETs of a quarter of it, never one large GET ...
    assert max(e - s for s, e in gets) <= 2 * MIB, sorted({e - s for s, e in gets})
    assert max(e for _, e in gets) == len(data)
    # ... several of them in flight at once: their round trips overlap.
    assert rig.store.most_running >= 2
    # The reader waits at most once per GET, not once per read (192 reads).
    assert rig.fetcher.misses <= len(gets) < len(data) // READ // 4
    await rig.fs.release(fh)


def test_the_window_is_topped_up_by_one_piece_as_soon_as_one_is_read() -> None:
    ra = Readahead()
    spans = []
    for off in range(0, 96 * MIB, MIB):
        span = ra.advance(
            off, MIB, 1 << 40, smallest=MIB, largest=32 * MIB, fetching=True, pieces=PIECES
        )
        if span is not None:
            spans.append(span)
        if off >= 8 * MIB:
            # Past the ramp, never less than three quarters of the window on
            # its way (topped up once half was read, it fell to half).
            assert ra.ahead_until - (off + MIB) >= 32 * MIB - 32 * MIB // PIECES
    # Steady: each top-up is one GET's worth, a quarter of the window.
    assert {e - s for s, e in spans[-8:]} == {32 * MIB // PIECES}


async def _first_mib_read(
    rig_for: RigFactory, size: int, hold: Callable[[int, int], bool]
) -> tuple[Rig, bytes, int]:
    """A file of ``size`` random bytes, its GETs of ranges ``hold`` names held,
    opened and read sequentially up to 1 MiB: the rig, the data, the handle."""
    data = os.urandom(size)
    rig = await rig_for({"f": data}, readahead_max=8 * MIB)
    rig.store.hold = hold
    fh = await rig.open("f")
    for off in range(0, MIB, READ):
        assert await rig.fs.read(fh, off, READ) == data[off : off + READ]
    return rig, data, fh


async def test_reader_moving_away_cancels_the_window_it_left(rig_for: RigFactory) -> None:
    # What the window asks for beyond the first megabyte never arrives on its own.
    rig, data, fh = await _first_mib_read(rig_for, 24 * MIB, lambda s, e: MIB <= s < 16 * MIB)
    store = rig.store
    await trio.testing.wait_all_tasks_blocked()  # the window's GETs have started
    asked = max(e for _, e in store.gets)
    assert asked >= 8 * MIB  # the window grew to 8 MiB ahead
    assert store.held >= 4  # its top-ups are waiting
    # A read elsewhere: the reader left its window.
    far = 20 * MIB
    assert await rig.fs.read(fh, far, READ) == data[far : far + READ]
    await trio.testing.wait_all_tasks_blocked()
    assert store.held == 0  # none of the old window's GETs is still running
    assert rig.fetcher.ahead_cancelled >= asked - 2 * MIB
    store.gate.set()
    await rig.settle()
    # Fetched and never read: at most one window (what had arrived before the jump).
    read = MIB + READ
    assert rig.fetcher.fetched_bytes - read <= MIB, rig.fetcher.fetched_bytes
    # The reader comes back: what was cancelled is fetched when read, and right.
    mid = 6 * MIB
    assert await rig.fs.read(fh, mid, READ) == data[mid : mid + READ]
    await rig.fs.release(fh)


async def test_window_cancelled_before_its_gets_began_sends_none(rig_for: RigFactory) -> None:
    """Reads served from the cache return without yielding, so the top-ups
    they ask for have not started when the reader jumps: cancelled then,
    they never reach the store (not even as a request counted and dropped)."""
    rig, data, fh = await _first_mib_read(rig_for, 16 * MIB, lambda s, e: s >= MIB)
    store = rig.store
    far = 12 * MIB
    store.hold = lambda start, end: MIB <= start < far
    assert await rig.fs.read(fh, far, READ) == data[far : far + READ]
    await trio.testing.wait_all_tasks_blocked()
    assert store.held == 0
    assert rig.fetcher.ahead_cancelled > 0
    assert store.asked == len(store.gets)
    store.gate.set()
    await rig.settle()
    await rig.fs.release(fh)


async def test_reads_slightly_out_of_order_keep_the_window(rig_for: RigFactory) -> None:
    rig, data, fh = await _first_mib_read(rig_for, 16 * MIB, lambda s, e: s >= MIB)
    store = rig.store
    await trio.testing.wait_all_tasks_blocked()  # the window's GETs have started
    waiting = store.held
    assert waiting >= 4
    # The kernel's reads may arrive a little out of order; a skip forward
    # into the window is still on the way.
    back = MIB - 3 * READ
    assert await rig.fs.read(fh, back, READ) == data[back : back + READ]
    await trio.testing.wait_all_tasks_blocked()
    assert store.held == waiting
    assert rig.fetcher.ahead_cancelled == 0
    store.gate.set()
    skip = 3 * MIB
    assert await rig.fs.read(fh, skip, READ) == data[skip : skip + READ]
    assert rig.fetcher.ahead_cancelled == 0
    await rig.settle()
    await rig.fs.release(fh)


async def test_random_reader_is_served_when_its_part_of_the_whole_fetch_is_in(
    rig_for: RigFactory,
) -> None:
    """Two connections, and every part of the whole-object fetch but the
    reader's held: the part holding the reader's range goes first, so the
    reader is served though the rest of the object never arrives."""
    data = os.urandom(24 * MIB)
    rig = await rig_for({"db": data})
    store = rig.store
    store.connections = trio.CapacityLimiter(2)
    fh = await rig.open("db")
    # The last read is the one after which the handle counts as random.
    offsets = [*[5 * MIB, 13 * MIB, 9 * MIB][: RANDOM_AFTER - 1], 22 * MIB + 4 * KIB]
    assert len(offsets) == RANDOM_AFTER
    for off in offsets[:-1]:
        assert await rig.fs.read(fh, off, 4 * KIB) == data[off : off + 4 * KIB]
    last = offsets[-1]
    # Held: the whole fetch's large GETs, except the one holding ``last``.
    store.hold = lambda start, end: end - start > MIB and not start <= last < end
    with trio.fail_after(30):  # without the order, this read waits forever
        assert await rig.fs.read(fh, last, 4 * KIB) == data[last : last + 4 * KIB]
    big = [(s, e) for s, e in store.gets if e - s > MIB]
    assert big
    assert big[0][0] <= last < big[0][1]
    assert store.held >= 1  # the rest of the object is still on its way
    store.gate.set()
    await rig.settle()
    # The whole object once, plus the chunks of the reads before it.
    assert rig.fetcher.fetched_bytes <= len(data) + RANDOM_AFTER * 64 * KIB
    await rig.fs.release(fh)


async def _read_all(rig: Rig, fh: int, size: int, step: int = MIB) -> bytes:
    got = bytearray()
    for off in range(0, size, step):
        got += await rig.fs.read(fh, off, step)
    return bytes(got)


async def test_sequential_reader_is_served_from_memory_in_one_job_per_piece(
    rig_for: RigFactory,
) -> None:
    """Each piece of the window is checked, stored and decrypted in one
    worker-thread job; the reader (1 MiB reads, as the kernel asks) takes the
    plaintext from memory: no read of the cache file, no thread hop of its
    own, and nothing held once it has read everything."""
    data = os.urandom(24 * MIB + 5000)
    rig = await rig_for({"seq": data}, readahead_max=8 * MIB)
    fetcher = rig.fetcher
    fh = await rig.open("seq")
    assert await _read_all(rig, fh, len(data)) == data
    await rig.settle()
    gets = len(rig.store.gets)
    # One job per GET at most (the first, foreground 1 MiB is read from the
    # file); before, every 1 MiB read was a job of its own too (25 more).
    assert fetcher.thread_jobs <= gets + 1, (fetcher.thread_jobs, gets)
    # Everything after the first GET came from memory ...
    assert fetcher.hold.served >= len(data) - 2 * MIB
    # ... and nothing is left there.
    assert fetcher.hold.held == 0
    assert fetcher.hold.dropped == 0
    await rig.fs.release(fh)
    # The cache file holds the same bytes (written past the page cache where
    # the filesystem allows): a second reader reads them with no GET.
    before = len(rig.store.gets)
    fetcher.hold.budget = 0  # nothing from memory this time
    fh = await rig.open("seq")
    assert await _read_all(rig, fh, len(data), 3 * MIB + 4096) == data
    assert len(rig.store.gets) == before
    await rig.fs.release(fh)


async def test_memory_held_for_readers_stays_within_its_budget(rig_for: RigFactory) -> None:
    data = os.urandom(16 * MIB)
    rig = await rig_for({"seq": data}, readahead_max=8 * MIB)
    hold = rig.fetcher.hold
    hold.budget = 2 * MIB  # less than a window: some pieces are let go unread
    fh = await rig.open("seq")
    got = bytearray()
    for off in range(0, len(data), READ):
        got += await rig.fs.read(fh, off, READ)
        assert hold.held <= hold.budget
    assert bytes(got) == data  # what was let go is read from the cache file
    await rig.settle()
    assert hold.held <= hold.budget
    assert hold.dropped > 0
    await rig.fs.release(fh)


async def test_reader_moving_away_lets_go_of_what_was_decrypted_ahead(
    rig_for: RigFactory,
) -> None:
    data = os.urandom(24 * MIB)
    rig = await rig_for({"seq": data}, readahead_max=8 * MIB)
    hold = rig.fetcher.hold
    fh = await rig.open("seq")
    for off in range(0, 2 * MIB, MIB):
        assert await rig.fs.read(fh, off, MIB) == data[off : off + MIB]
    await rig.settle()
    assert hold.held > 0  # the window, decrypted, waiting for the reader
    far = 20 * MIB
    assert await rig.fs.read(fh, far, READ) == data[far : far + READ]
    # Only what holds the reader's new range (if anything) may stay.
    v = next(iter(rig.fs.ctx.cache.versions.values()))
    assert all(s <= far < s + len(b) for s, b in (v.plain or {}).items())
    await rig.settle()
    await rig.fs.release(fh)


async def test_whole_object_fetch_keeps_every_connection_busy(rig_for: RigFactory) -> None:
    """Random access fetches the object whole in as many GETs at once as
    there are connections, its pieces past the page cache where the
    filesystem allows, and every byte once."""
    data = os.urandom(48 * MIB)
    rig = await rig_for({"db": data})
    store = rig.store
    store.connections = trio.CapacityLimiter(4)
    fh = await rig.open("db")
    offsets = [7 * MIB, 31 * MIB, 2 * MIB][:RANDOM_AFTER]
    for off in offsets[:-1]:
        assert await rig.fs.read(fh, off, 4 * KIB) == data[off : off + 4 * KIB]
    store.hold = lambda start, end: end - start > MIB  # the whole fetch's pieces
    direct_before = DIRECT.written
    async with trio.open_nursery() as nursery:
        last = offsets[-1]
        nursery.start_soon(rig.fs.read, fh, last, 4 * KIB)
        await trio.testing.wait_all_tasks_blocked()
        # Every connection carries one of its GETs (48 MiB: seven pieces).
        assert store.running == 4
        assert store.held >= 3
        store.gate.set()
    await rig.settle()
    assert rig.fetcher.fetched_bytes <= len(data) + RANDOM_AFTER * 64 * KIB
    if DIRECT.enabled:
        assert DIRECT.written - direct_before >= len(data) - RANDOM_AFTER * 64 * KIB - MIB
    for off in (0, 17 * MIB + 5, len(data) - 4 * KIB):
        assert await rig.fs.read(fh, off, 4 * KIB) == data[off : off + 4 * KIB]
    await rig.fs.release(fh)


async def test_closing_cancels_the_window_still_on_its_way(rig_for: RigFactory) -> None:
    rig, _, fh = await _first_mib_read(rig_for, 24 * MIB, lambda s, e: s >= MIB)
    store = rig.store
    await trio.testing.wait_all_tasks_blocked()  # the window's GETs have started
    assert store.held >= 2
    await rig.fs.release(fh)
    await trio.testing.wait_all_tasks_blocked()
    assert store.held == 0
    assert store.cancelled >= 2
    store.gate.set()
    await rig.settle()
    # Only what the reader read (and its first GET) came down.
    assert rig.fetcher.fetched_bytes <= MIB + READ
    assert rig.fetcher.hold.held == 0


async def test_closing_cancels_the_rest_of_a_whole_object_fetch(rig_for: RigFactory) -> None:
    data = os.urandom(32 * MIB)
    rig = await rig_for({"db": data})
    store = rig.store
    fh = await rig.open("db")
    offsets = [3 * MIB, 21 * MIB + 100, 12 * MIB][:RANDOM_AFTER]
    last = offsets[-1]
    # The whole fetch's pieces except the reader's own never arrive on their own.
    store.hold = lambda start, end: end - start > MIB and not start <= last < end
    for off in offsets:
        assert await rig.fs.read(fh, off, 4 * KIB) == data[off : off + 4 * KIB]
    await trio.testing.wait_all_tasks_blocked()
    assert store.held >= 2
    # A second handle reads the same file: the whole fetch is not its own.
    await rig.fs.release(fh)
    await trio.testing.wait_all_tasks_blocked()
    assert store.held == 0
    store.gate.set()
    await rig.settle()
    # The reads' chunks and the piece holding the last read: not the object.
    assert rig.fetcher.fetched_bytes <= RANDOM_AFTER * 64 * KIB + 8 * MIB


async def test_a_reader_waiting_keeps_the_whole_fetch_going_after_another_closes(
    rig_for: RigFactory,
) -> None:
    """What a reader waits for is not speculative: another handle closing
    does not cancel it."""
    data = os.urandom(32 * MIB)
    rig = await rig_for({"db": data})
    store = rig.store
    fh = await rig.open("db")
    other = await rig.open("db")
    offsets = [3 * MIB, 21 * MIB + 100, 12 * MIB][:RANDOM_AFTER]
    store.hold = lambda start, end: end - start > MIB
    for off in offsets[:-1]:
        assert await rig.fs.read(fh, off, 4 * KIB) == data[off : off + 4 * KIB]
    got: list[bytes] = []
    far = 30 * MIB  # (not in the piece the first reader waits for)

    async def read_far() -> None:
        got.append(bytes(await rig.fs.read(other, far, 4 * KIB)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.fs.read, fh, offsets[-1], 4 * KIB)  # starts the whole fetch
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(read_far)  # waits for the whole fetch's piece there
        await trio.testing.wait_all_tasks_blocked()
        held = store.held
        await rig.fs.release(fh)
        await trio.testing.wait_all_tasks_blocked()
        # The pieces both readers wait for go on; the others were cancelled.
        assert 2 <= store.held < held
        store.gate.set()
    assert got == [data[far : far + 4 * KIB]]
    await rig.settle()
    await rig.fs.release(other)


async def test_pieces_of_one_copy_are_checked_and_stored_in_parallel_jobs(
    rig_for: RigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pieces of one window that arrive together are checked, stored and
    decrypted by worker-thread jobs at once: the first two jobs meet at a
    barrier (run one after the other, the first would wait there alone and
    the barrier break)."""
    rig, data, fh = await _first_mib_read(rig_for, 24 * MIB, lambda s, e: s >= MIB)
    store = rig.store
    await trio.testing.wait_all_tasks_blocked()  # the window's GETs have started
    assert store.held >= 2
    barrier = threading.Barrier(2, timeout=30)  # (the timeout: a guard against a hang)
    met: list[int] = []
    entered = [0]
    entry = threading.Lock()
    real = fetch._check_and_store

    def meeting(*args: Any) -> Any:
        # (Small pieces are checked inline, in the event loop: not those.)
        # Exactly the first two worker-thread jobs meet: the count is taken
        # under a lock, since up to four jobs may enter at once.
        if threading.current_thread() is not threading.main_thread():
            with entry:
                entered[0] += 1
                mine = entered[0] <= 2
            if mine:
                met.append(barrier.wait())
        return real(*args)

    monkeypatch.setattr(fetch, "_check_and_store", meeting)
    store.gate.set()
    await rig.settle()
    assert sorted(met) == [0, 1]
    assert not barrier.broken
    assert await _read_all(rig, fh, len(data)) == data
    await rig.fs.release(fh)
