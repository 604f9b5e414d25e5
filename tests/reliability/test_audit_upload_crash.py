"""Audit: kill -9 while a large file's multipart upload completes (branches
seqw2 and rwup), on a real mount.

The file was closed (close() returned) before the kill, so it must come
back whole after a restart, and the object recovery leaves must carry its
integrity tags (a cold ``--require-integrity`` mount reads it): the tags go
on by a server-side copy *after* the CompleteMultipartUpload, and the kill
lands once the Complete reached the server, before that copy.
Both ways a large file goes up are tried: streamed while it is written
(stream.py) and pipelined at its commit (pipeline.py).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from cosencfs.server import LocalCosServer
from tests.testlib import MountFactory

pytestmark = pytest.mark.mount

MIB = 1 << 20


def _sync(mountpoint: Path) -> None:
    try:
        os.setxattr(mountpoint, b"user.cosencfs.sync", b"1")
    except OSError:
        pass  # the daemon is killed under it


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "pipelined"])
def test_kill9_right_after_the_complete_keeps_the_file_and_its_tags(
    mounts: MountFactory, server: LocalCosServer, tmp_path: Path, streamed: bool
) -> None:
    cfg = tmp_path / "fs.toml"
    cfg.write_text(f"[fs]\nstream_uploads = {'true' if streamed else 'false'}\n")
    m = mounts(extra=["--writeback-delay", "3600", "--config", str(cfg)])
    data = os.urandom(40 * MIB + 12345)  # five full parts and a short one
    (m.mountpoint / "big.bin").write_bytes(data)  # closed: journaled
    # Each request answered 200 ms late: the kill lands after the Complete
    # reached the server, before the copy that puts the tags.
    server.set_faults(0.0, latency_ms=200)
    t = threading.Thread(target=_sync, args=(m.mountpoint,), daemon=True)
    t.start()
    deadline = time.monotonic() + 120
    while server.stats().get("CompleteMultipartUpload", 0) < 1:
        assert time.monotonic() < deadline, server.stats()
        time.sleep(0.005)
    # The Complete has reached the server, which answers it 200 ms later
    # (and completes it all the same): the copy is not sent yet.
    m.kill()
    # The window this test is about: no copy had been answered at the kill.
    assert server.stats().get("CopyObject", 0) == 0, server.stats()
    t.join(10)
    time.sleep(0.5)  # let the server finish what it was sent
    server.set_faults(0.0, latency_ms=0)
    m2 = mounts(cache=m.cache_dir.name)  # recovery before the mount goes live
    assert (m2.mountpoint / "big.bin").read_bytes() == data
    assert m2.umount() == 0
    strict = mounts(extra=["--require-integrity"])
    assert (strict.mountpoint / "big.bin").read_bytes() == data
    assert strict.umount() == 0
