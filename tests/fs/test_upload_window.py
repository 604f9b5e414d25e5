"""Small-file uploads keep enough PUTs in flight to hide latency, never more
than the connection pool, and neither fsync nor sync waits for the
write-back delay (issue 17, cosencfs/fs/window.py).

The Filesystem tests run on MemoryStore with 10 ms a request under trio's
autojump clock: a PUT takes exactly 10 ms of the clock the window reads,
whatever the machine's load, so what the window does is deterministic.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
import trio
import trio.testing

from cosencfs.cache.manager import CacheManager
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.fs.core import Filesystem
from cosencfs.fs.window import UploadWindow
from cosencfs.store.base import Body
from cosencfs.store.memory import MemoryStore
from tests.testlib import fs_options

ROOT = 1
POOL = 16


class Counting(MemoryStore):
    """Counts PUTs of the files in flight at once (not the directory's index)."""

    def __init__(self, latency_ms: int) -> None:
        super().__init__(latency_ms=latency_ms)
        self.in_flight = 0
        self.peak = 0

    async def put(
        self,
        key: str,
        body: Body,
        metadata: Mapping[str, str],
        *,
        content_type: str = "",
        if_none_match: bool = False,
    ) -> str:
        mine = key.startswith("small/f")
        self.in_flight += mine
        self.peak = max(self.peak, self.in_flight)
        try:
            return await super().put(
                key, body, metadata, content_type=content_type, if_none_match=if_none_match
            )
        finally:
            self.in_flight -= mine


@pytest.fixture
async def counting_fs(
    codec: EnvelopeCodec, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Filesystem, Counting]]:
    store = Counting(latency_ms=10)
    mgr = CacheManager(tmp_path / "cache", store, limit_bytes=1 << 30)
    delay: float = request.param
    try:
        fs = Filesystem(
            store,
            codec,
            mgr,
            # No integrity tags: tagging a copy is a worker thread's job, and
            # the autojump clock jumps while one runs (PUTs would end early).
            fs_options(
                writeback_delay=delay, max_dirty_age=3600.0, connections=POOL, write_tags=False
            ),
        )
        async with trio.open_nursery() as nursery:
            await fs.start(nursery)
            yield fs, store
            nursery.cancel_scope.cancel()
    finally:
        mgr.close()


async def _create(fs: Filesystem, n: int, *, fsync: bool = False) -> None:
    d = await fs.mkdir(ROOT, b"small", 0o755, os.getuid(), os.getgid())
    for i in range(n):
        fh, _ = await fs.create(d.ino, f"f{i:04d}".encode(), 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
        await fs.write(fh, 0, os.urandom(4096))
        await fs.flush(fh)
        if fsync:
            await fs.fsync(fh, False)
        await fs.release(fh)


async def _files(store: MemoryStore) -> int:
    """Files in COS under small/ (not the index, not the marker)."""
    page = await store.list_objects("small/")
    return sum(1 for o in page.objects if o.key[len("small/") :][:1] in ("f", "s"))


@pytest.mark.parametrize("counting_fs", [1.0], indirect=True)
async def test_background_uploads_grow_to_the_pool_while_latency_is_flat(
    counting_fs: tuple[Filesystem, Counting], autojump_clock: trio.testing.MockClock
) -> None:
    fs, store = counting_fs
    await _create(fs, 300)
    # The write-back delay passes (the clock jumps); every file goes up in
    # the background.
    await trio.sleep(60.0)
    assert fs.writeback.queued == 0
    assert await _files(store) == 300
    # 10 ms a PUT and nothing else slower: the window opened to the pool
    # (it starts at 2), and never past it.
    assert store.peak == POOL
    assert fs.window.limit == POOL


@pytest.mark.parametrize("counting_fs", [3600.0], indirect=True)
async def test_sync_stays_within_the_pool(
    counting_fs: tuple[Filesystem, Counting], autojump_clock: trio.testing.MockClock
) -> None:
    fs, store = counting_fs
    await _create(fs, 300)
    await fs.sync_all()
    assert await _files(store) == 300
    assert store.peak == POOL


@pytest.mark.parametrize("counting_fs", [3600.0], indirect=True)
async def test_fsync_and_sync_do_not_wait_for_the_writeback_delay(
    counting_fs: tuple[Filesystem, Counting],
) -> None:
    # The real clock: an hour's delay would trip the minute.
    fs, store = counting_fs
    with trio.fail_after(60):
        await _create(fs, 3, fsync=True)
        assert await _files(store) == 3
        d = await fs.lookup(ROOT, b"small")
        for i in range(20):
            fh, _ = await fs.create(d.ino, f"s{i}".encode(), 0o644, os.O_WRONLY, 0, 0)
            await fs.write(fh, 0, b"x" * 100)
            await fs.release(fh)
        await fs.sync_all()
        assert await _files(store) == 23


# -- the window on its own -----------------------------------------------------


def _round(w: UploadWindow, latency: float, *, full: bool = True) -> None:
    """One round of ``w.limit`` PUTs; ``full``: as many as the window allows."""
    n = w.limit if full else max(1, w.limit // 2)
    for _ in range(n):
        w.started()
    for _ in range(n):
        w.observe(latency)
    if not full:
        for _ in range(w.limit - n):
            w.started()
            w.observe(latency)


def test_window_grows_to_its_bound_while_latency_stays_flat() -> None:
    w = UploadWindow(16)
    for _ in range(20):
        _round(w, 0.010)
        assert w.limit <= 16
    assert w.limit == 16
    assert w.peak <= 16


def test_window_shrinks_when_latency_grows_with_it() -> None:
    # Shared bandwidth: each PUT takes 5 ms per PUT in flight.
    w = UploadWindow(16)
    for _ in range(60):
        _round(w, 0.005 * w.limit)
    assert w.limit <= 5
    assert w.limit >= w.floor


def test_window_does_not_grow_on_rounds_it_was_not_full() -> None:
    w = UploadWindow(16, start=4)
    for _ in range(20):
        _round(w, 0.010, full=False)
    assert w.limit == 4
