"""kill -9 right after close(): the records are only in the journal's log
(cosencfs/cache/closelog.py), not yet in SQLite, and the next mount uploads
every file from them."""

from __future__ import annotations

import os
import sqlite3

import pytest

from cosencfs.config.settings import MountSettings
from cosencfs.server import LocalCosServer
from tests.testlib import BUCKET, MountFactory

pytestmark = pytest.mark.mount


def test_files_closed_just_before_kill9_come_back_from_the_log(
    mounts: MountFactory, server: LocalCosServer
) -> None:
    m = mounts(extra=["--writeback-delay", "3600"])
    root = MountSettings(
        bucket=BUCKET, mountpoint="/unused", endpoint=m.url, cache_dir=str(m.cache_dir)
    ).cache_root()
    files = {f"f{i:02d}": os.urandom(100 + 37 * i) for i in range(40)}
    for name, data in files.items():
        (m.mountpoint / name).write_bytes(data)  # closed: close() returned
    # Nothing committed: each record is in SQLite (applied with some
    # transaction since) or, the newest at least, only in the log.
    logged = (root / "journal.db-closes").read_bytes().count(b"\n")
    with sqlite3.connect(root / "journal.db") as db:
        applied = db.execute("SELECT COUNT(*) FROM dirty").fetchone()[0]
    assert logged >= 1
    assert logged + applied == len(files)
    assert server.stats().get("PutObject", 0) == 0
    m.kill()
    m2 = mounts(cache=m.cache_dir.name)  # same cache directory: recovery
    for name, data in files.items():
        assert (m2.mountpoint / name).read_bytes() == data
    assert m2.umount() == 0
    assert server.stats().get("PutObject", 0) == len(files)
    m3 = mounts(cache="cold")
    for name, data in files.items():
        assert (m3.mountpoint / name).read_bytes() == data
