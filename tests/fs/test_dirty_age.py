"""The age of the oldest dirty data (the metrics endpoint's alert input): from the first
change not yet in COS, through failed uploads, to 0 once uploaded or unlinked."""

from __future__ import annotations

import os
import time

import pytest

from cosencfs.errors import FsError
from cosencfs.fs.core import Filesystem, SyncError
from cosencfs.server import LocalCosServer
from tests.testlib import FsFactory

ROOT = 1


async def listed(fs: Filesystem) -> Filesystem:
    """``fs`` with its root listed: creating a name needs no request after this."""
    with pytest.raises(FsError):
        await fs.lookup(ROOT, b"not-there")
    return fs


async def write(fs: Filesystem, name: str, data: bytes) -> None:
    fh, _ = await fs.create(ROOT, name.encode(), 0o640, os.O_WRONLY | os.O_CREAT, 0, 0)
    await fs.write(fh, 0, data)
    await fs.flush(fh)
    await fs.release(fh)


async def test_dirty_age_spans_failed_uploads_and_ends_when_uploaded(
    make_fs: FsFactory, server: LocalCosServer
) -> None:
    fs = await listed(await make_fs())
    wb = fs.writeback
    assert wb.oldest_dirty_age() == 0
    server.set_faults(1.0)
    start = time.monotonic()
    await write(fs, "first", b"one")
    written = time.monotonic()
    with pytest.raises(SyncError):
        await fs.sync_all()
    # A file dirtied later does not make the oldest dirty data any younger.
    await write(fs, "second", b"two")
    before = time.monotonic()
    age = wb.oldest_dirty_age()
    assert before - written <= age <= time.monotonic() - start
    assert age > 0

    server.set_faults(0.0)
    await fs.sync_all()
    assert fs.dirty_inodes() == []
    assert wb.oldest_dirty_age() == 0
    dirty = fs.stats()["dirty"]
    assert isinstance(dirty, dict)
    assert dirty["oldest_age"] == 0


async def test_an_unlinked_dirty_file_has_no_age(
    make_fs: FsFactory, server: LocalCosServer
) -> None:
    fs = await listed(await make_fs())
    server.set_faults(1.0)
    await write(fs, "gone", b"x" * 100)
    with pytest.raises(SyncError):
        await fs.sync_all()
    assert fs.writeback.oldest_dirty_age() > 0
    await fs.unlink(ROOT, b"gone")
    assert fs.writeback.oldest_dirty_age() == 0
