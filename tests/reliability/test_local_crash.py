"""A crashed ``mount --local`` finds its dirty data again at the next mount."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.testlib import force_unmount, is_mounted

pytestmark = pytest.mark.mount


def _mount(local: Path, mnt: Path, cache: Path, log: Path) -> subprocess.Popen[bytes]:
    mnt.mkdir(exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cosencfs", "mount", "--local", str(local), str(mnt),
             "--cache-dir", str(cache), "--foreground", "--writeback-delay", "3600"],
            stdout=out, stderr=out,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while not is_mounted(mnt):
        if proc.poll() is not None:
            raise RuntimeError(f"mount exited with {proc.returncode}: {log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"mount did not come up: {log.read_text()}")
        time.sleep(0.05)
    return proc


def test_local_mount_recovers_after_kill_9(tmp_path: Path) -> None:
    local, mnt, cache, log = (
        tmp_path / "bucket",
        tmp_path / "mnt",
        tmp_path / "cache",
        tmp_path / "log",
    )
    data = os.urandom(300_000)
    proc = _mount(local, mnt, cache, log)
    try:
        (mnt / "f.bin").write_bytes(data)  # closed: journaled, not uploaded (delay 3600 s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        force_unmount(mnt)
        # The embedded server gets another port: the cache must still be found.
        proc = _mount(local, mnt, cache, log)
        assert (mnt / "f.bin").read_bytes() == data
    finally:
        if proc.poll() is None:
            subprocess.run([sys.executable, "-m", "cosencfs", "umount", str(mnt)], check=False)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        force_unmount(mnt)
