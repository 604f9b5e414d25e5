"""Spare cache files (cosencfs/cache/spare.py): made ahead by a worker thread, handed out
once, empty and private, never swept while spare, removed at close."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio

from cosencfs.cache import spare
from cosencfs.cache.manager import CacheManager
from cosencfs.crypto.ctr import DataKey
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.fs.core import Filesystem
from cosencfs.store.memory import MemoryStore
from tests.cache.conftest import NO_STORE
from tests.testlib import fs_options


def _filling(s: spare.SpareFiles) -> bool:
    return s._filling  # (a call: mypy would keep the loop's narrowing)


async def _until_ready(s: spare.SpareFiles) -> None:
    with trio.fail_after(30):
        while not s._ready:  # noqa: ASYNC110 - a worker thread fills it
            await trio.sleep(0.005)


async def test_copies_use_files_made_ahead_in_a_thread(
    cache: CacheManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    made_on = []
    real = spare.make_files

    def recording(data_dir: Path, vids: list[str]) -> list[str]:
        made_on.append(trio.lowlevel.in_trio_run())
        return real(data_dir, vids)

    monkeypatch.setattr(spare, "make_files", recording)
    first = cache.staged(DataKey.generate(), 0)  # none ready yet: made here, a batch starts
    await _until_ready(cache.spares)
    assert made_on == [False]  # in a worker thread, not on the event loop
    ready = list(cache.spares._ready)
    assert len(ready) == spare.BATCH
    # The start-up sweep leaves spare files alone (they are named nowhere else).
    assert cache.sweep_orphans({first.vid}) == 0
    assert all((cache.data_dir / vid).exists() for vid in ready)

    copies = [cache.staged(DataKey.generate(), 0) for _ in range(spare.BATCH // 2)]
    assert [v.vid for v in copies] == ready[: len(copies)]
    assert cache.spares.taken == len(copies)
    for v in copies:
        st = os.stat(v.path, follow_symlinks=False)
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_size == 0
    # Each is handed out once: copies get distinct files.
    assert len({v.vid for v in copies} | {first.vid}) == len(copies) + 1
    assert not any(v.vid in cache.spares for v in copies)


async def test_close_removes_spare_files(tmp_path: Path) -> None:
    cm = CacheManager(tmp_path / "cache", NO_STORE, limit_bytes=1 << 30)
    cm.staged(DataKey.generate(), 0)
    await _until_ready(cm.spares)
    left = list(cm.spares._ready)
    cm.close()
    assert not any((cm.data_dir / vid).exists() for vid in left)


async def test_a_failing_batch_leaves_copies_working(
    cache: CacheManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(data_dir: Path, vids: list[str]) -> list[str]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spare, "make_files", full)
    cache.staged(DataKey.generate(), 0)
    with trio.fail_after(30):
        while cache.spares._filling:  # noqa: ASYNC110 - a worker thread ends it
            await trio.sleep(0.005)
    v = cache.staged(DataKey.generate(), 0)
    assert os.path.exists(v.path)  # noqa: ASYNC240
    assert cache.spares.taken == 0


async def test_a_started_filesystem_has_spare_files_before_its_first_create(
    codec: EnvelopeCodec, tmp_path: Path
) -> None:
    store = MemoryStore()
    mgr = CacheManager(tmp_path / "cache", store, limit_bytes=1 << 30)
    try:
        fs = Filesystem(store, codec, mgr, fs_options())
        async with trio.open_nursery() as nursery:
            await fs.start(nursery)
            await _until_ready(mgr.spares)
            assert mgr.spares.missed == 0
            fh, _ = await fs.create(1, b"f", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
            assert await fs.write(fh, 0, b"x" * 100) == 100
            # Its copy was one made ahead, not made on the loop.
            assert mgr.spares.missed == 0
            assert mgr.spares.taken == 1
            await fs.release(fh)
            nursery.cancel_scope.cancel()
    finally:
        mgr.close()


async def test_the_reserve_is_refilled_before_it_runs_low(cache: CacheManager) -> None:
    cache.staged(DataKey.generate(), 0)
    await _until_ready(cache.spares)
    with trio.fail_after(30):
        while cache.spares._filling:  # noqa: ASYNC110 - a worker thread fills it
            await trio.sleep(0.005)
    # Taking one leaves fewer than LOW: the next batch starts at once.
    cache.staged(DataKey.generate(), 0)
    assert _filling(cache.spares)
    assert len(cache.spares._ready) >= spare.LOW - 1 >= 63
