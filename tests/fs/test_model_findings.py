"""Regressions found by the Filesystem model test (tests/model/test_fs_model.py).

Each test stages the interleaving the model test hit, deterministically: a
request is held until the operation it raced has done its part.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from cosencfs.store.cos import CosStore
from tests.fs.test_filesystem import ROOT, names
from tests.testlib import FsFactory


async def test_rmdir_during_its_marker_upload_does_not_bring_the_directory_back(
    make_fs: FsFactory, store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory's marker upload (a chmod going up in the background) racing
    its rmdir: rmdir waits for the upload (it takes the directory's upload lock,
    as unlink does a file's), so its delete comes after the marker's PUT, and
    an upload that has not started yet sees the directory gone.  Without that,
    the PUT landed after the delete and the removed directory was back for the
    next mount (a resurrected name).  The PUT is held until the marker's
    delete is done, or for a second when rmdir waits."""
    fs = await make_fs()
    await fs.mkdir(ROOT, b"b", 0o750, 0, 0)
    await fs.sync_all()
    ino = (await fs.lookup(ROOT, b"b")).ino
    await fs.setattr(ino, mode=0o40700)
    node = fs.ctx.table.get(ino)
    assert node is not None
    deleted = trio.Event()
    real_put, real_delete_many = store.put, store.delete_many

    async def put(key: str, *args: Any, **kw: Any) -> str:
        if key == "b/":
            with trio.move_on_after(1.0):
                await deleted.wait()
        return await real_put(key, *args, **kw)

    async def delete_many(keys: Any) -> Any:
        failures = await real_delete_many(keys)
        if "b/" in keys:
            deleted.set()
        return failures

    monkeypatch.setattr(store, "put", put)
    monkeypatch.setattr(store, "delete_many", delete_many)

    async def rmdir_and_delete() -> None:
        await fs.rmdir(ROOT, b"b")
        await fs.ctx.deleter.flush()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.writeback.flush, node)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(rmdir_and_delete)
    monkeypatch.undo()
    await fs.sync_all()
    await fs.ctx.deleter.flush()
    assert [o.key async for page in store.list_all("b/") for o in page.objects] == []
    fresh = await make_fs()
    assert await names(fresh, ROOT) == []


async def test_a_directory_listed_again_keeps_its_chmod_not_yet_uploaded(
    make_fs: FsFactory,
) -> None:
    """A directory's own listing sees its marker (an ETag or date other than the
    one it remembers: a marker put here has no date, a rename copies it) and
    used to take its attributes to be unknown: the next getattr HEADed the
    marker and took its mode as clean, so a chmod not yet uploaded was lost
    (dir_ttl 0, lazy upload)."""
    fs = await make_fs(dir_ttl=0.0, writeback_delay=3600.0, max_dirty_age=3600.0)
    await fs.mkdir(ROOT, b"b", 0o700, 0, 0)
    ino = (await fs.lookup(ROOT, b"b")).ino
    await fs.setattr(ino, mode=0o40640)
    assert await names(fs, ino) == []
    assert oct((await fs.getattr(ino)).mode) == oct(0o40640)
    await fs.sync_all()
    fresh = await make_fs()
    entry = await fresh.getattr((await fresh.lookup(ROOT, b"b")).ino)
    assert oct(entry.mode) == oct(0o40640)
