"""Journal records per small file created (cosencfs/fs/dirtyrecord.py).

A new file written front to back is journaled at close() in full. Its
commit seals it: a new file going up in one PUT writes nothing more (the
sealed flag only lets recovery recognise a landed upload, and a replay under
a fresh key is as good for a file with nothing below it:
tests/fs/test_recovery_window.py); any other commit changes that one flag of
the record (one small UPDATE, ``Journal.seal_dirty``), not a second full
record. The record it leaves must be exactly the full one, since recovery
reads it after a crash between the upload and the journal.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from cosencfs.cache.journal import Journal
from cosencfs.fs.dirtyrecord import DirtyRecords
from cosencfs.fs.inode import ROOT_INO
from cosencfs.store.cos import CosStore
from tests.testlib import FsFactory


@pytest.mark.parametrize("one_put", [True, False])
async def test_a_new_file_is_journaled_once_and_sealed_in_place(
    make_fs: FsFactory, store: CosStore, monkeypatch: pytest.MonkeyPatch, one_put: bool
) -> None:
    fs = await make_fs()
    if not one_put:
        # As a commit that is not one PUT (a multipart upload to resume).
        monkeypatch.setattr(DirtyRecords, "_one_put", lambda self, head: False)
    journal = fs.ctx.journal
    calls: Counter[str] = Counter()
    for name in ("log_dirty", "seal_dirty", "delete_dirty"):
        real = getattr(Journal, name)

        def counted(self: Journal, *a: Any, _real: Any = real, _name: str = name) -> Any:
            calls[_name] += 1
            return _real(self, *a)

        monkeypatch.setattr(Journal, name, counted)

    seen: dict[str, Any] = {}
    real_put = store.put

    async def put(key: str, body: bytes, meta: Any, **kw: Any) -> str:
        if key == "n0":
            # The upload is under way: the journal holds the sealed record.
            node = fs.ns.inode(ino)
            fid = node.as_file.fid
            seen["fast"] = journal.get_dirty(fid)
            node.as_file.journaled = None  # as if nothing were journaled yet:
            fs.records.record(node)  # the whole record, written the slow way
            seen["full"] = journal.get_dirty(fid)
        return await real_put(key, body, meta, **kw)

    monkeypatch.setattr(store, "put", put)
    n = 3
    for i in range(n):
        fh, e = await fs.create(ROOT_INO, f"n{i}".encode(), 0o644, os.O_WRONLY, 0, 0)
        if i == 0:
            ino = e.ino
        await fs.write(fh, 0, os.urandom(2048))
        await fs.flush(fh)
        await fs.release(fh)
    calls.clear()
    await fs.sync_all()
    assert calls["log_dirty"] == 1  # only the test's own full record
    assert calls["seal_dirty"] == (0 if one_put else n)
    assert calls["delete_dirty"] == n
    fast, full = seen["fast"], seen["full"]
    assert fast is not None
    assert full.layers[0].sealed
    assert fast.object_envelope is not None
    if one_put:
        # The close record, untouched: the same but for the flag.
        assert not fast.layers[0].sealed
        fast.layers[0].sealed = True
    assert fast == full
    assert journal.dirty_count() == 0


async def test_records_of_committed_files_leave_the_journal_when_idle(
    make_fs: FsFactory,
) -> None:
    fs = await make_fs()
    fh, _e = await fs.create(ROOT_INO, b"f", 0o644, os.O_WRONLY, 0, 0)
    await fs.write(fh, 0, b"x" * 100)
    await fs.flush(fh)
    await fs.release(fh)
    await fs.sync_all()
    # Deferred to the journal's next write, or FORGET_DELAY later if none comes.
    with trio.fail_after(30):
        while _on_disk(fs.ctx.journal.path):  # noqa: ASYNC110 - written by a timer
            await trio.sleep(0.01)


def _on_disk(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT fid FROM dirty")}


async def test_closing_journals_one_full_record(make_fs: FsFactory) -> None:
    fs = await make_fs()
    fh, e = await fs.create(ROOT_INO, b"f", 0o644, os.O_WRONLY, 0, 0)
    await fs.write(fh, 0, b"x" * 100)
    await fs.flush(fh)
    rec = fs.ctx.journal.get_dirty(fs.ns.inode(e.ino).as_file.fid)
    assert rec is not None
    assert not rec.layers[0].sealed  # appends may follow until the commit seals it
    await fs.release(fh)
