"""The keystream rule at the Filesystem level: rewrites never reuse a (key, counter block).

Each test checks only the ledger records its own operations appended, so a
failure names the pattern that broke the rule.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from cosencfs.crypto import ledger
from cosencfs.fs.core import Filesystem

ROOT = 1
PAGE = 4096


@pytest.fixture
def ledger_since(tmp_path: Path) -> Callable[[], ledger.Report]:
    """Check the ledger records appended after this fixture was set up."""
    path = Path(os.environ[ledger.ENV])
    start = path.stat().st_size if path.exists() else 0

    def check() -> ledger.Report:
        with open(path, "rb") as f:
            f.seek(start)
            part = tmp_path / "ledger-slice.bin"
            part.write_bytes(f.read())
        return ledger.check(part)

    return check


async def _rewrite(fs: Filesystem, ino: int, offset: int, data: bytes, *, sync: bool) -> None:
    fh, _ = await fs.open(ino, os.O_RDWR)
    await fs.write(fh, offset, data)
    await fs.flush(fh)
    if sync:
        await fs.fsync(fh, False)
    await fs.release(fh)


async def test_sqlite_page_rewrites(
    fsys: Filesystem, ledger_since: Callable[[], ledger.Report]
) -> None:
    fh, entry = await fsys.create(ROOT, b"db", 0o600, os.O_RDWR | os.O_CREAT, 0, 0)
    await fsys.write(fh, 0, os.urandom(16 * PAGE))
    await fsys.release(fh)
    # The same pages rewritten again and again, closed each time (journaled)
    # and now and then synced (uploaded): each time other plaintext.
    for i in range(12):
        await _rewrite(fsys, entry.ino, (i % 3) * PAGE, os.urandom(PAGE), sync=i % 4 == 3)
    report = ledger_since()
    assert report.records > 12
    assert report.violations == [], str(report)


async def test_truncate_then_extend(
    fsys: Filesystem, ledger_since: Callable[[], ledger.Report]
) -> None:
    fh, entry = await fsys.create(ROOT, b"t", 0o600, os.O_RDWR | os.O_CREAT, 0, 0)
    await fsys.write(fh, 0, os.urandom(64 * 1024))
    await fsys.flush(fh)
    await fsys.setattr(entry.ino, size=100)
    await fsys.write(fh, 64 * 1024, b"end")  # the gap reads as zeros
    await fsys.flush(fh)
    await fsys.fsync(fh, False)
    await fsys.setattr(entry.ino, size=10)
    await fsys.setattr(entry.ino, size=80 * 1024)
    await fsys.fsync(fh, False)
    await fsys.release(fh)
    report = ledger_since()
    assert report.violations == [], str(report)


async def test_overwrite_after_upload_and_partial_blocks(
    fsys: Filesystem, ledger_since: Callable[[], ledger.Report]
) -> None:
    fh, _ = await fsys.create(ROOT, b"p", 0o600, os.O_RDWR | os.O_CREAT, 0, 0)
    await fsys.write(fh, 0, os.urandom(1000))
    await fsys.fsync(fh, False)
    for off in (3, 7, 500, 999, 1000, 1001):  # inside and across 16-byte blocks
        await fsys.write(fh, off, os.urandom(9))
        await fsys.fsync(fh, False)
    await fsys.release(fh)
    assert ledger_since().violations == []


async def test_commit_that_waited_while_truncate_to_zero_retired_its_head(
    fsys: Filesystem, ledger_since: Callable[[], ledger.Report]
) -> None:
    """A commit that took the head, then waited for its lock while ``truncate(0)``
    replaced and retired it, must not produce that head again: the retired head
    still names its object key, but its bytes are gone (they would come out as
    zeros, a second plaintext under the key the first write used)."""
    fh, entry = await fsys.create(ROOT, b"race", 0o600, os.O_RDWR | os.O_CREAT, 0, 0)
    await fsys.write(fh, 0, b"hello world")  # a direct copy under the new object's key
    node = fsys.ctx.table.get(entry.ino)
    assert node is not None
    head = node.as_file.head
    assert head is not None
    assert head.object_dk is not None
    async with trio.open_nursery() as nursery:
        # Hold the head's lock so truncate queues first, then the commit.
        await head.lock.acquire()
        nursery.start_soon(functools.partial(fsys.setattr, entry.ino, size=0))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(fsys.fsync, fh, False)
        await trio.testing.wait_all_tasks_blocked()
        head.lock.release()
    await fsys.write(fh, 0, b"other bytes")
    await fsys.fsync(fh, False)
    await fsys.release(fh)
    fh, _ = await fsys.open(entry.ino, os.O_RDONLY)
    assert await fsys.read(fh, 0, 100) == b"other bytes"
    await fsys.release(fh)
    report = ledger_since()
    assert report.violations == [], str(report)
