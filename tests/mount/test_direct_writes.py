"""Write-only handles bypass the kernel's page cache (fs/handles.py ``direct_io_wanted``).

Through the page cache, each write(2) costs the daemon a ``getxattr`` of
``security.capability`` first (a FUSE superblock is not ``SB_NOSEC``); a
direct write does not.  What must not change: readers holding cached pages
see the new bytes, the bytes survive a remount, and a write drops set-ID
bits as Linux does.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from cosencfs.fs.files import kernel_version
from tests.security._sec_helpers import NOBODY
from tests.testlib import MountFactory

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(kernel_version() < (6, 6), reason="direct writes need Linux >= 6.6"),
]

WRITES = 20


def _getxattrs(root: Path) -> int:
    stats = json.loads(os.getxattr(root, "user.cosencfs.stats"))
    return int(stats["fuse"]["getxattrs"])


def _write_n(path: Path, flags: int) -> int:
    fd = os.open(path, flags | os.O_CREAT, 0o644)
    try:
        for i in range(WRITES):
            os.write(fd, bytes([65 + i]) * 1000)
    finally:
        os.close(fd)
    return WRITES * 1000


def test_write_only_handle_asks_no_getxattr_per_write(mounts: MountFactory) -> None:
    m = mounts()
    root = m.mountpoint
    # Reading the counters costs getxattrs of its own (Python asks twice when
    # the answer outgrows its first buffer): measured, then taken off.
    before = _getxattrs(root)
    own = _getxattrs(root) - before
    before = _getxattrs(root)
    _write_n(root / "wo", os.O_WRONLY)
    write_only = _getxattrs(root) - before - own
    before = _getxattrs(root)
    _write_n(root / "rw", os.O_RDWR)
    read_write = _getxattrs(root) - before - own
    assert write_only == 0, write_only
    # The contrast: the cached path asks before every write (what was saved).
    assert read_write >= WRITES, read_write
    expected = b"".join(bytes([65 + i]) * 1000 for i in range(WRITES))
    assert m.umount() == 0
    m.start()
    assert (root / "wo").read_bytes() == expected
    assert (root / "rw").read_bytes() == expected


def test_cached_reader_sees_direct_writes(mounts: MountFactory) -> None:
    m = mounts()
    f = m.mountpoint / "f"
    f.write_bytes(b"a" * 10_000 + b"z" * 100)
    expected = bytearray(b"a" * 10_000 + b"z" * 100)
    r = os.open(f, os.O_RDONLY)
    try:
        assert os.pread(r, 20_000, 0) == expected  # now in the page cache
        w = os.open(f, os.O_WRONLY)
        try:
            os.pwrite(w, b"b" * 300, 4000)  # inside a cached page
            expected[4000:4300] = b"b" * 300
            os.pwrite(w, b"c" * 50, len(expected))  # the cached partial last page
            expected += b"c" * 50
        finally:
            os.close(w)
        assert os.pread(r, 20_000, 0) == expected
    finally:
        os.close(r)
    assert f.read_bytes() == expected
    assert m.umount() == 0
    m.start()
    assert f.read_bytes() == expected


def test_append_only_writer_and_tail_reader(mounts: MountFactory) -> None:
    """A log written O_WRONLY|O_APPEND while a reader follows it (tail -f)."""
    m = mounts()
    log = m.mountpoint / "log"
    w = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    r = os.open(log, os.O_RDONLY)
    seen = b""
    try:
        for i in range(10):
            os.write(w, f"line {i}\n".encode())
            seen += os.pread(r, 4096, len(seen))
    finally:
        os.close(w)
        os.close(r)
    assert seen == b"".join(f"line {i}\n".encode() for i in range(10))


def test_setid_bits_set_after_open_are_dropped_by_a_write(mounts: MountFactory) -> None:
    m = mounts()
    suid = m.mountpoint / "suid"
    sgid_lock = m.mountpoint / "sgid-no-gx"
    for path, mode, after in ((suid, 0o6755, 0o755), (sgid_lock, 0o2644, 0o2644)):
        path.write_bytes(b"x")
        os.chmod(path, 0o644)
        fd = os.open(path, os.O_WRONLY)  # direct: no set-ID bits yet
        try:
            os.chmod(path, mode)
            os.write(fd, b"y")
        finally:
            os.close(fd)
        assert stat.S_IMODE(path.stat().st_mode) == after, (path.name, oct(path.stat().st_mode))
    assert m.umount() == 0
    m.start()
    assert suid.read_bytes() == sgid_lock.read_bytes() == b"y"


def test_unprivileged_write_to_setuid_file_drops_the_bit(mounts: MountFactory) -> None:
    """Opened with the bit set: the cached path, where the kernel drops it for a non-root writer."""
    m = mounts(extra=["-o", "allow_other"])
    f = m.mountpoint / "prog"
    f.write_bytes(b"#!/bin/sh\n")
    os.chmod(f, 0o4777)
    # Opened by root, written by nobody (the kernel judges the writer), so
    # nobody needs no way through pytest's 0700 directories.
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        done = subprocess.run(
            [
                *("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"),
                *("/usr/bin/python3", "-c", f"import os; os.write({fd}, b'echo hi\\n')"),
            ],
            pass_fds=(fd,),
            capture_output=True,
            timeout=30,
            check=False,
        )
    finally:
        os.close(fd)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(f.stat().st_mode) == 0o777
    assert f.read_bytes() == b"#!/bin/sh\necho hi\n"


def test_cp_and_cmp_through_write_only_handles(mounts: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    m = mounts()
    dst = m.mountpoint / "dst"
    subprocess.run(["cp", str(src), str(dst)], check=True)
    subprocess.run(["cmp", str(src), str(dst)], check=True)
    assert m.umount() == 0
    m.start()
    subprocess.run(["cmp", str(src), str(dst)], check=True)
