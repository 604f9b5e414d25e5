"""Receive buffers of fetched pieces (cosencfs/cache/recvbuf.py): reused when
their GET returned, dropped when it failed or was cancelled (a thread may
still write into it), few kept idle, page-aligned so the piece goes to the
cache file with O_DIRECT from where it was received; and the Fetcher using
them (cosencfs/cache/fetch.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from cosencfs.cache import recvbuf
from cosencfs.cache.content import ObjectContent, Source
from cosencfs.cache.direct import DIRECT, DIRECT_ALIGN, address
from cosencfs.cache.fetch import Fetcher
from cosencfs.cache.recvbuf import RecvBuffers
from cosencfs.crypto.ctr import DataKey, encrypt
from cosencfs.errors import TransientError
from cosencfs.store.memory import MemoryStore

MIB = 1 << 20


def test_a_returned_buffer_is_reused_and_page_aligned() -> None:
    pool = RecvBuffers(size=MIB, keep=2)
    lease = pool.lease()
    view = lease.give(MIB)
    assert len(view) == MIB
    assert address(view) % DIRECT_ALIGN == 0  # O_DIRECT straight from it
    # A retried GET gets the same buffer again.
    assert address(lease.give(100)) == address(view)
    lease.release(reuse=True)
    assert (pool.made, pool.idle) == (1, 1)
    again = pool.lease()
    assert address(again.give(MIB)) == address(view)
    assert (pool.made, pool.reused, pool.idle) == (1, 1, 0)


def test_a_failed_or_cancelled_get_never_gives_its_buffer_back() -> None:
    pool = RecvBuffers(size=MIB, keep=2)
    lease = pool.lease()
    lease.give(MIB)
    lease.release(reuse=False)
    assert (pool.idle, pool.dropped) == (0, 1)
    lease = pool.lease()
    lease.give(MIB)
    assert pool.made == 2  # a new one: the dropped one may still be written to


def test_few_idle_buffers_are_kept() -> None:
    pool = RecvBuffers(size=MIB, keep=2)
    leases = [pool.lease() for _ in range(5)]
    for lease in leases:
        lease.give(MIB)
    for lease in leases:
        lease.release(reuse=True)
    assert (pool.made, pool.idle, pool.dropped) == (5, 2, 3)
    # A lease that never got a buffer (small answers come in the store's own) returns none.
    pool.lease().release(reuse=True)
    assert pool.idle == 2


def test_a_body_larger_than_the_buffers_gets_its_own() -> None:
    pool = RecvBuffers(size=MIB, keep=2)
    lease = pool.lease()
    assert len(lease.give(MIB + 1)) == MIB + 1
    lease.release(reuse=True)
    assert (pool.made, pool.idle) == (0, 0)


def test_glibc_serves_decrypted_blocks_from_its_heaps() -> None:
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        glibc = None
    if not glibc:
        pytest.skip("not glibc")
    assert recvbuf.heap_blocks()
    assert recvbuf.heap_blocks()  # once per process: asked again, the same answer


class Receiving(MemoryStore):
    """Takes the caller's buffer as soon as the length is known and fills it in
    two halves with a wait between them (the transport receiving a body)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.given: list[memoryview] = []
        self.fail = False

    async def get_into(
        self,
        key: str,
        start: int,
        end: int,
        buffer: Callable[[int], memoryview],
        *,
        if_match: str | None = None,
    ) -> memoryview:
        data = await self.get(key, start, end, if_match=if_match)
        into = buffer(len(data))[: len(data)]
        self.given.append(into)
        half = len(data) // 2
        into[:half] = data[:half]
        await self.gate.wait()
        if self.fail:
            raise TransientError("connection reset", op="GetObject", key=key)
        into[half:] = data[half:]
        return into


async def _copy(
    tmp_path: Path, store: MemoryStore, size: int, name: str = "obj"
) -> tuple[ObjectContent, bytes]:
    dk = DataKey.generate()
    plain = os.urandom(size)
    await store.put(name, encrypt(dk, 0, plain), {})
    etag = (await store.head(name)).etag
    v = ObjectContent(name, str(tmp_path / name), dk, size, Source(name, etag, dk, size))
    return v, plain


async def test_fetched_pieces_reuse_buffers_and_go_to_disk_from_them(tmp_path: Path) -> None:
    store = MemoryStore()
    v, plain = await _copy(tmp_path, store, 6 * MIB)
    fetcher = Fetcher(store, trio.CapacityLimiter(2))
    fetcher.buffers = RecvBuffers(size=MIB, keep=2)
    direct_before = DIRECT.in_place
    try:
        for off in range(0, 6 * MIB, MIB):  # one piece at a time: one buffer for all
            assert await fetcher.read(v, off, MIB) == plain[off : off + MIB]
        pool = fetcher.buffers
        assert (pool.made, pool.reused, pool.dropped) == (1, 5, 0)
        async with trio.open_nursery() as nursery:
            v2, plain2 = await _copy(tmp_path, store, 6 * MIB, "obj2")
            # Six pieces at once (the window): several buffers, two kept idle after.
            fetcher.prefetch(nursery, v2, 0, 6 * MIB, piece=MIB, serve=True)
        assert await fetcher.read(v2, 0, 6 * MIB) == plain2
        # One buffer per piece, each new or reused; at most two kept idle.
        assert pool.made + pool.reused == 6 + 6
        assert pool.idle == min(2, pool.made)
        assert pool.dropped == pool.made - pool.idle
        if DIRECT.enabled:
            # The aligned pieces went to the cache file straight from their buffers.
            assert DIRECT.in_place - direct_before >= 6 * MIB
    finally:
        v.close()


async def test_a_cancelled_fetch_drops_its_buffer(tmp_path: Path) -> None:
    store = Receiving()
    v, plain = await _copy(tmp_path, store, 2 * MIB)
    fetcher = Fetcher(store, trio.CapacityLimiter(2))
    fetcher.buffers = RecvBuffers(size=MIB, keep=2)
    owner = object()
    try:
        async with trio.open_nursery() as nursery:
            fetcher.prefetch(nursery, v, 0, MIB, owner=owner, piece=MIB)
            await trio.testing.wait_all_tasks_blocked()
            assert len(store.given) == 1  # half received into the buffer
            fetcher.cancel_ahead(v, owner, (MIB, MIB))
        pool = fetcher.buffers
        assert (pool.made, pool.idle, pool.dropped) == (1, 0, 1)
        assert not v.present  # nothing of the half-received piece stored
        # The next fetch gets a new buffer, never the one a thread may write to.
        store.gate.set()
        assert await fetcher.read(v, 0, MIB) == plain[:MIB]
        assert pool.made == 2
        assert pool.idle == 1
    finally:
        v.close()


async def test_a_failed_fetch_drops_its_buffer_and_stores_nothing(tmp_path: Path) -> None:
    store = Receiving()
    v, _ = await _copy(tmp_path, store, MIB)
    fetcher = Fetcher(store, trio.CapacityLimiter(2))
    fetcher.buffers = RecvBuffers(size=MIB, keep=2)
    store.fail = True
    store.gate.set()
    try:
        with pytest.raises(TransientError):
            await fetcher.read(v, 0, MIB)
        assert (fetcher.buffers.idle, fetcher.buffers.dropped) == (0, 1)
        assert not v.present
    finally:
        v.close()


def test_buffers_are_private_memory() -> None:
    """Not shared anonymous memory (``mmap.mmap(-1, n)``'s default), which
    Linux keeps in shmem: each first touch of a page a shmem fault (perf
    showed them under a cold read's socket receives)."""
    pool = RecvBuffers(size=MIB, keep=1)
    view = pool.lease().give(MIB)
    view[0] = 1  # (touched: mapped now)
    at = address(view)
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, perms = line.split()[:2]
        low, high = (int(x, 16) for x in span.split("-"))
        if low <= at < high:
            assert perms[3] == "p", line
            return
    pytest.fail("the buffer is in no mapping")
