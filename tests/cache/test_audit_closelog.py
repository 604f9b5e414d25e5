"""Audit of the close log (cosencfs/cache/closelog.py, branch create5): lines a
crash, a damaged or a foreign log leave, read back by the next journal.

Each case is a journal never closed (a crash) and a new one on the same path.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sqlite3
from pathlib import Path

import pytest

from cosencfs.cache.journal import Journal
from cosencfs.cache.manager import CacheManager
from cosencfs.errors import ConfigError
from tests.cache.conftest import NO_STORE
from tests.cache.test_closelog import log_lines, on_disk
from tests.cache.test_journal import layered


def _logfile(path: Path) -> Path:
    return path.parent / (path.name + "-closes")


@pytest.mark.parametrize("column", [0, 1, 2, 3, 4, 5, 6, 7, 11, 12])
def test_a_line_sqlite_refuses_is_skipped_not_a_mount_that_cannot_start(
    tmp_path: Path, column: int
) -> None:
    """A line of the right shape whose row breaks a NOT NULL column (a damaged
    log, or one written by hand) must not stop every other record of the log
    from coming back, nor the journal from opening (before: IntegrityError
    from the recovery's one transaction, so the mount could not start)."""
    path = tmp_path / "journal.db"
    j = Journal(path)
    j.log_dirty(layered("a"))
    line = json.loads(_logfile(path).read_bytes().splitlines()[0])
    row = line[1]
    row[column] = None
    with open(_logfile(path), "ab") as f:
        f.write(json.dumps([line[0] + 1, row]).encode() + b"\n")
    j._ahead._seq += 1  # (the damaged line took a number)
    j.log_dirty(layered("b"))
    j2 = Journal(path)  # crash
    try:
        assert {r.fid for r in j2.dirty_records()} == {"a", "b"}
        assert log_lines(path) == 0
    finally:
        j2.close()


def test_a_crash_during_the_recovery_itself_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recovery's transaction committed, but the process died before the
    log was emptied: the next open must not apply those lines again over
    what the second run wrote since (here a commit's seal, one UPDATE of the
    record in SQLite), and numbering goes on past them."""
    path = tmp_path / "journal.db"
    j = Journal(path)
    base = layered("a")
    rec = dataclasses.replace(
        base, layers=[dataclasses.replace(base.layers[0], sealed=False), *base.layers[1:]]
    )
    j.log_dirty(rec)
    j.log_dirty(layered("gone"))
    j.delete_dirty("gone")
    monkeypatch.setattr(os, "ftruncate", lambda fd, n: None)
    j2 = Journal(path)  # crash, then a recovery that dies before emptying the log
    monkeypatch.undo()
    assert on_disk(path) == {"a"}
    assert log_lines(path) == 3
    assert j2.seal_dirty("a", rec.vid)  # the second run seals it (in SQLite only)
    j2.log_dirty(layered("c"))  # and logs a record after the old lines
    j3 = Journal(path)  # crash again
    try:
        got = {r.fid: r for r in j3.dirty_records()}
        assert set(got) == {"a", "c"}
        assert got["a"].layers[0].sealed, "an applied line was applied again"
        assert log_lines(path) == 0
    finally:
        j3.close()
        j2.close()


def test_a_record_logged_while_a_batch_is_applied_is_not_emptied_with_it(
    tmp_path: Path,
) -> None:
    """A record appended while a transaction applies the queued ones (the
    journal's own write inside ``_transaction``) stays in the log until it
    is applied itself."""
    path = tmp_path / "journal.db"
    j = Journal(path)
    j.log_dirty(layered("a"))
    with j._transaction():
        j.log_dirty(layered("late"))  # not among the batch this transaction applies
    assert on_disk(path) == {"a"}
    assert log_lines(path) == 2  # not emptied: "late" is not applied yet
    j2 = Journal(path)  # crash
    try:
        assert {r.fid for r in j2.dirty_records()} == {"a", "late"}
    finally:
        j2.close()


def test_a_failed_transaction_keeps_the_batch_for_the_next(
    tmp_path: Path,
) -> None:
    """A transaction that fails after applying the queued records (its own write
    refused) rolls them back with it: they stay queued and logged, and the
    next transaction (or a crash's recovery) applies them."""
    path = tmp_path / "journal.db"
    j = Journal(path)
    j.log_dirty(layered("a"))
    with pytest.raises(sqlite3.IntegrityError), j._transaction():
        j._db.execute("INSERT INTO settings VALUES (NULL, NULL)")
    assert on_disk(path) == set()
    assert log_lines(path) == 1
    j2 = Journal(path)  # crash
    try:
        assert {r.fid for r in j2.dirty_records()} == {"a"}
    finally:
        j2.close()
    j.log_dirty(layered("b"))  # (the first run again, had it lived)
    assert {r.fid for r in j.dirty_records()} >= {"a", "b"}
    j.close()


def test_a_second_process_on_the_cache_dir_leaves_the_log_alone(tmp_path: Path) -> None:
    """Two mounts of one cache directory: the second is refused before it
    opens the journal, so it neither applies nor empties the first one's log
    (its records, applied by it, would then be applied again after a crash
    of the first, over what the first wrote since)."""
    root = tmp_path / "cache"
    first = CacheManager(root, NO_STORE, limit_bytes=1 << 30)
    try:
        first.journal.log_dirty(layered("open"))
        logfile = root / "journal.db-closes"
        before = logfile.read_bytes()
        with pytest.raises(ConfigError, match="in use"):
            CacheManager(root, NO_STORE, limit_bytes=1 << 30)
        assert logfile.read_bytes() == before
        assert on_disk(root / "journal.db") == set()
        assert [r.fid for r in first.journal.dirty_records()] == ["open"]
    finally:
        first.close()


def test_a_short_write_not_taken_back_does_not_swallow_the_next_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short write whose taking back fails too (the ftruncate refused) left a
    torn line at the end of the log, and the next record was appended to
    it: one line that does not parse, which ends the log at recovery, so
    that record (its close() had returned) and every one after it were lost."""
    path = tmp_path / "journal.db"
    j = Journal(path)
    j.log_dirty(layered("a"))
    real_write, real_truncate = os.write, os.ftruncate

    def refuse(fd: int, n: int) -> None:
        raise OSError(errno.EIO, "refused")

    monkeypatch.setattr(os, "write", lambda fd, b: real_write(fd, b[:10]))
    monkeypatch.setattr(os, "ftruncate", refuse)
    with pytest.raises(OSError):
        j.log_dirty(layered("b"))  # not acknowledged: its close() fails
    monkeypatch.setattr(os, "write", real_write)
    monkeypatch.setattr(os, "ftruncate", real_truncate)
    j.log_dirty(layered("c"))  # acknowledged
    j.log_dirty(layered("d"))  # acknowledged
    j2 = Journal(path)  # crash
    try:
        assert {r.fid for r in j2.dirty_records()} == {"a", "c", "d"}
    finally:
        j2.close()
        j.close()
