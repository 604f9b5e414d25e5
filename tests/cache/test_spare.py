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
from tests.cache.conftest import NO_STORE


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
