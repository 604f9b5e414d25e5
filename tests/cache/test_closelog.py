"""Dirty records logged ahead of SQLite (cosencfs/cache/closelog.py, ``Journal.log_dirty``).

A crash is a journal that is never closed: its records logged but not yet
applied must be read back by the next ``Journal`` on the same path, in
order, and nothing applied and deleted since may come back.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from pathlib import Path

import pytest

from cosencfs.cache.journal import Journal
from tests.cache.test_journal import layered


def on_disk(path: Path) -> set[str]:
    """The dirty rows another connection sees (what SQLite holds, not the log)."""
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT fid FROM dirty")}


def log_lines(path: Path) -> int:
    return (path.parent / (path.name + "-closes")).read_bytes().count(b"\n")


def test_a_logged_record_is_one_append_and_survives_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    j = Journal(path)
    recs = [layered(f"f{i}", f"dir/f{i}") for i in range(3)]
    for rec in recs:
        j.log_dirty(rec)
    # No transaction per record: SQLite has none of them yet, the log has all.
    assert on_disk(path) == set()
    assert log_lines(path) == 3
    assert j.get_dirty("f1") == recs[1]  # reads see them (applied first)
    assert on_disk(path) == {"f0", "f1", "f2"}
    assert log_lines(path) == 0  # applied: the log is emptied
    last = layered("f3", "dir/f3")
    j.log_dirty(last)
    # The process dies: j is never closed, nothing more is written.
    j2 = Journal(path)
    try:
        assert j2.get_dirty("f3") == last
        assert {r.fid for r in j2.dirty_records()} == {"f0", "f1", "f2", "f3"}
        assert log_lines(path) == 0
    finally:
        j2.close()


def test_recovered_records_keep_their_order_and_content(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    j = Journal(path)
    first, second = layered("f", "a"), layered("f", "b")
    j.log_dirty(first)
    j.log_dirty(second)
    j2 = Journal(path)  # crash
    try:
        assert j2.dirty_records() == [second]
    finally:
        j2.close()


def test_an_unlinked_files_record_stays_deleted_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    j = Journal(path)
    j.log_dirty(layered("applied"))
    j.flush_deferred()
    j.log_dirty(layered("logged"))
    j.delete_dirty("applied")  # unlinked before its upload, and
    j.delete_dirty("logged")  # this one too: no transaction since
    j.log_dirty(layered("kept"))
    j2 = Journal(path)  # crash
    try:
        assert [r.fid for r in j2.dirty_records()] == ["kept"]
    finally:
        j2.close()


def test_a_record_applied_and_deleted_is_not_brought_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal.db"
    j = Journal(path)
    j.log_dirty(layered("gone"))
    j.delete_dirty("gone")  # committed: the delete follows the record, in order
    j.log_dirty(layered("kept"))
    # The batch is applied, but the process dies before the log is emptied.
    monkeypatch.setattr(os, "ftruncate", lambda fd, n: None)
    j.flush_deferred()
    monkeypatch.undo()
    assert on_disk(path) == {"kept"}
    assert log_lines(path) == 3
    j2 = Journal(path)
    try:
        # The mark applied with the batch says both lines are in SQLite already.
        assert [r.fid for r in j2.dirty_records()] == ["kept"]
        assert log_lines(path) == 0
        # And numbering goes on past them: a new record is not taken for an old one.
        j2.log_dirty(layered("new"))
        j3 = Journal(path)
        assert {r.fid for r in j3.dirty_records()} == {"kept", "new"}
        j3.close()
    finally:
        j2.close()


def test_a_cut_line_ends_the_log_and_a_foreign_one_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "journal.db"
    j = Journal(path)
    j.log_dirty(layered("a"))
    logfile = tmp_path / "journal.db-closes"
    with open(logfile, "ab") as f:
        f.write(b'[99,["not","a","row"]]\n')  # the wrong shape: skipped
        f.write(b"[98,[" + b"[1]," * 14 + b"[1]]]\n")  # nothing SQLite can bind: skipped
    j.log_dirty(layered("b"))
    with open(logfile, "ab") as f:
        f.write(b'[100,["c"')  # a write cut short: the end of the log
    with caplog.at_level(logging.ERROR, logger="cosencfs.cache.closelog"):
        j2 = Journal(path)
    try:
        assert {r.fid for r in j2.dirty_records()} == {"a", "b"}
        messages = " ".join(r.getMessage() for r in caplog.records)
        assert "not a record" in messages
        assert "not whole" in messages
    finally:
        j2.close()


def test_a_short_write_is_taken_back_and_is_enospc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal.db"
    j = Journal(path)
    j.log_dirty(layered("a"))
    size = (tmp_path / "journal.db-closes").stat().st_size
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, b: real(fd, b[:10]))
    with pytest.raises(OSError) as e:
        j.log_dirty(layered("b"))
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC
    assert (tmp_path / "journal.db-closes").stat().st_size == size  # taken back
    j.log_dirty(layered("c"))  # the next line starts clean
    j2 = Journal(path)
    try:
        assert {r.fid for r in j2.dirty_records()} == {"a", "c"}
    finally:
        j2.close()
        j.close()


def test_the_log_is_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    Journal(path).close()
    st = (tmp_path / "journal.db-closes").lstat()
    assert st.st_mode & 0o777 == 0o600
    (tmp_path / "elsewhere").write_bytes(b"")
    (tmp_path / "journal.db-closes").unlink()
    (tmp_path / "journal.db-closes").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        Journal(path)
