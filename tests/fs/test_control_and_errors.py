"""Errnos decided by the filesystem layer (mknod, extended attributes) and the
adapter's once-a-minute failure log."""

from __future__ import annotations

import errno
import json
import logging
import os

import pytest

from cosencfs.errors import FsError, NotFoundError
from cosencfs.fs.control import XATTR_FORMAT, XATTR_PID, XATTR_STATS, XATTR_SYNC
from cosencfs.fs.core import Filesystem
from cosencfs.fuse_ops import _report, errno_for
from cosencfs.mount.logsetup import LogThrottle

ROOT = 1


async def _errno_of(call: object) -> int:
    with pytest.raises(FsError) as info:
        await call  # type: ignore[misc]
    return errno_for(info.value)


async def test_hard_links_are_refused_and_mknod_takes_only_node_types(fsys: Filesystem) -> None:
    fh, entry = await fsys.create(ROOT, b"f", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
    await fsys.release(fh)
    assert await _errno_of(fsys.link(entry.ino, ROOT, b"g")) == errno.EPERM
    assert await _errno_of(fsys.mknod(ROOT, b"d", 0o040755, 0, 0, 0)) == errno.EINVAL


async def test_control_names_and_refusals(fsys: Filesystem) -> None:
    assert await fsys.getxattr(ROOT, XATTR_PID) == str(os.getpid()).encode()
    stats = json.loads(await fsys.getxattr(ROOT, XATTR_STATS))
    assert "store" in stats
    assert "process" in stats
    fh, entry = await fsys.create(ROOT, b"f", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
    await fsys.release(fh)
    assert await fsys.getxattr(entry.ino, XATTR_FORMAT) == b"cosencfs"
    # Root-only names elsewhere, and unknown names, are absent (ENOATTR).
    assert await _errno_of(fsys.getxattr(entry.ino, XATTR_PID)) == errno.ENODATA
    assert await _errno_of(fsys.getxattr(ROOT, b"user.other")) == errno.ENODATA
    assert await _errno_of(fsys.getxattr(ROOT, XATTR_FORMAT)) == errno.ENODATA  # a directory
    # The control prefix is reserved (EPERM); the root stores nothing; nothing is listed.
    assert await _errno_of(fsys.setxattr(entry.ino, XATTR_SYNC, b"1")) == errno.EPERM
    assert await _errno_of(fsys.removexattr(entry.ino, XATTR_FORMAT)) == errno.EPERM
    assert await _errno_of(fsys.setxattr(ROOT, b"user.other", b"1")) == errno.ENOTSUP
    assert await _errno_of(fsys.removexattr(ROOT, b"user.other")) == errno.ENOTSUP
    assert await fsys.listxattr(ROOT) == []
    assert await fsys.listxattr(entry.ino) == []
    # Setting sync on the root uploads what is dirty.
    assert fsys.dirty_inodes()
    await fsys.setxattr(ROOT, XATTR_SYNC, b"1")
    assert not fsys.dirty_inodes()


def test_log_throttle_once_per_interval_and_forgets_old_entries() -> None:
    t = LogThrottle(60.0)
    a, b = ("read", "NotFoundError", "a"), ("read", "NotFoundError", "b")
    assert t.should_log(a, 0.0)
    assert not t.should_log(a, 59.9)
    assert t.should_log(b, 30.0)
    assert len(t) == 2
    # a is older than the interval: forgotten, and logged again.
    assert t.should_log(a, 60.0)
    assert not t.should_log(b, 60.0)
    # Failures long past leave nothing behind.
    for i in range(1000):
        t.should_log(("read", "E", str(i)), 1000.0 + i * 0.01)
    assert len(t) == 1000
    t.should_log(("read", "E", "late"), 2000.0)
    assert len(t) == 1


def test_log_throttle_is_bounded() -> None:
    t = LogThrottle(60.0, max_entries=10)
    for i in range(100):
        assert t.should_log(("read", "E", str(i)), float(i) / 100)
    assert len(t) == 10
    # The newest are the ones kept.
    assert not t.should_log(("read", "E", "99"), 1.0)


def test_report_logs_each_object_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    exc = NotFoundError("gone", key="some/object-for-throttle-test")
    with caplog.at_level(logging.ERROR, logger="cosencfs.fuse_ops"):
        _report("read", exc)
        _report("read", exc)
    assert sum("some/object-for-throttle-test" in r.getMessage() for r in caplog.records) == 1
