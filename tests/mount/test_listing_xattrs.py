"""``ls -l`` of a directory does not cost the daemon one getxattr per file.

coreutils ``ls -l`` asks for ``security.selinux`` and
``system.posix_acl_access`` of every file, and FUSE passes each ask to the
daemon (~100 us each in Python: 2 s of a warm listing of 10,000 files).  ls
stops asking for a device once it answers ENOTSUP (not after ENODATA), so
the names the mount does not store answer ENOTSUP (docs/semantics.md).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import subprocess
from collections.abc import Callable

import pytest

from tests.testlib import MountFactory

pytestmark = pytest.mark.mount

FILES = 300


def _getxattrs(root: str) -> int:
    stats = json.loads(os.getxattr(root, "user.cosencfs.stats"))
    return int(stats["fuse"]["getxattrs"])


def test_ls_l_asks_no_xattr_per_file(mounts: MountFactory) -> None:
    m = mounts()
    root = str(m.mountpoint)
    d = m.mountpoint / "many"
    d.mkdir()
    for i in range(FILES):
        (d / f"f{i:04d}").write_bytes(b"x")
    before = _getxattrs(root)
    out = subprocess.run(
        ["ls", "-l", str(d)],
        capture_output=True,
        check=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    asked = _getxattrs(root) - before
    assert len(out.stdout.splitlines()) == FILES + 1  # "total" and one line per file
    # The second stats read is one; ls itself asks each name once for the device.
    assert asked <= 5, asked


@pytest.mark.parametrize("name", ["security.selinux", "system.posix_acl_access", "trusted.t"])
def test_unstored_namespaces_are_not_supported(mounts: MountFactory, name: str) -> None:
    m = mounts()
    f = m.mountpoint / "f"
    f.write_bytes(b"x")
    d = m.mountpoint / "d"
    d.mkdir()
    for path in (f, d, m.mountpoint):
        calls: list[Callable[[], object]] = [
            functools.partial(os.getxattr, path, name),
            functools.partial(os.removexattr, path, name),
        ]
        if not name.startswith("system."):
            # (The kernel parses an ACL before asking: b"1" is its EINVAL.)
            calls.append(functools.partial(os.setxattr, path, name, b"1"))
        for call in calls:
            with pytest.raises(OSError) as info:
                call()
            assert info.value.errno == errno.ENOTSUP, (path, name)
    # user.* still answer ENODATA for a missing name.
    with pytest.raises(OSError) as missing:
        os.getxattr(f, "user.none")
    assert missing.value.errno == errno.ENODATA
