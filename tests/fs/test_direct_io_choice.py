"""Which handles bypass the kernel's page cache (fs/handles.py ``direct_io_wanted``)."""

from __future__ import annotations

import os
import stat

import pytest

from cosencfs.fs.attrs import Attrs, Kind
from cosencfs.fs.files import kernel_version
from cosencfs.fs.handles import direct_io_wanted
from cosencfs.fs.inode import Inode


def _node(mode: int, *, known: bool = True) -> Inode:
    attrs = Attrs(mode=stat.S_IFREG | mode, uid=0, gid=0, mtime_ns=0, ctime_ns=0, atime_ns=0)
    return Inode(2, Kind.FILE, None, "f", attrs, attrs_known=known)


@pytest.mark.parametrize(
    ("flags", "mode", "known", "kernel", "want"),
    [
        (os.O_WRONLY, 0o644, True, (6, 6), True),
        (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600, True, (6, 18), True),
        (os.O_RDWR, 0o644, True, (6, 18), False),  # reads and mappings use the cache
        (os.O_RDONLY, 0o644, True, (6, 18), False),
        (os.O_WRONLY, 0o644, True, (6, 5), False),  # no invalidation on direct writes
        (os.O_WRONLY, 0o644, True, (0, 0), False),
        (os.O_WRONLY, 0o4755, True, (6, 18), False),  # the kernel drops set-ID bits itself
        (os.O_WRONLY, 0o2755, True, (6, 18), False),
        (os.O_WRONLY, 0o2644, True, (6, 18), False),
        (os.O_WRONLY, 0o644, False, (6, 18), False),  # mode not known: cannot tell
    ],
)
def test_direct_io_wanted(
    flags: int, mode: int, known: bool, kernel: tuple[int, int], want: bool
) -> None:
    assert direct_io_wanted(_node(mode, known=known), flags, kernel) is want


@pytest.mark.parametrize(
    ("release", "version"),
    [
        ("6.18.44-fc-v1300", (6, 18)),
        ("5.4.0-150-generic", (5, 4)),
        ("6.6-rc1", (6, 6)),
        ("6.1.0-13-amd64", (6, 1)),
        ("garbage", (0, 0)),
        ("", (0, 0)),
    ],
)
def test_kernel_version(release: str, version: tuple[int, int]) -> None:
    assert kernel_version(release) == version
