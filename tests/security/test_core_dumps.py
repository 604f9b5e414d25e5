"""Crash dumps of the daemon (item 7 of issue 12): none, and its memory is closed.

Two observations of the kernel's state, neither taken on the daemon's word:
``/proc/PID/limits`` of a running daemon, and, for a process of an ordinary
user running the same ``harden_process`` the daemon runs first, ``/proc``
files that the kernel hands to root (so that user can no longer read the
process's environment or memory) as soon as it is not dumpable.  The running
daemon also reports the flag it reads back with prctl(PR_GET_DUMPABLE) in
``cosencfs stats --json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.security._sec_helpers import NOBODY, as_nobody, need_tools
from tests.testlib import MountFactory

CHILD = f"""
import ctypes, os, resource, sys
from cosencfs import hardening
# Core dumps on to begin with, whatever limit the test run inherited.
resource.setrlimit(resource.RLIMIT_CORE, (1 << 20, resource.RLIM_INFINITY))
os.setgid({NOBODY}); os.setuid({NOBODY})
ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # setuid() cleared the flag: dumpable again
print("ready", flush=True); sys.stdin.readline()
hardening.harden_process()
print("hardened", flush=True); sys.stdin.readline()
"""


def core_limit(pid: int) -> list[str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return line.split()[4:6]
    raise AssertionError("no core limit line")


@pytest.mark.mount
def test_running_daemon_has_no_core_dumps(mounts: MountFactory) -> None:
    m = mounts()
    (m.mountpoint / "f").write_bytes(b"keys are loaded now")
    assert m.proc is not None
    assert core_limit(m.proc.pid) == ["0", "0"]
    done = subprocess.run(
        [sys.executable, "-m", "cosencfs", "stats", "--json", str(m.mountpoint)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(done.stdout)["process"] == {"dumpable": False, "core_limit": 0}


@need_tools
def test_hardened_process_is_closed_to_its_own_user() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    environ = f"/proc/{child.pid}/environ"
    try:
        assert child.stdout.readline().strip() == "ready"
        # Dumpable: the user's own process, readable by the user.
        assert os.stat(environ).st_uid == NOBODY
        assert as_nobody("cat", environ).returncode == 0
        assert core_limit(child.pid) != ["0", "0"]
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "hardened"
        # Not dumpable: the kernel gives the files to root; no core either.
        assert os.stat(environ).st_uid == 0
        denied = as_nobody("cat", environ)
        assert denied.returncode != 0
        assert b"Permission denied" in denied.stderr
        assert core_limit(child.pid) == ["0", "0"]
    finally:
        child.stdin.close()
        child.wait(30)
        child.stdout.close()


def test_key_holding_commands_harden_themselves(tmp_path: Path) -> None:
    """fsck, rekey, keygen and local-server hold keys or secrets too."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cosencfs", "local-server", "--root", str(tmp_path / "srv"),
         "--port", "0", "--bucket", "b-1250000000"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline()  # its URL: up and running
        assert core_limit(proc.pid) == ["0", "0"]
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
