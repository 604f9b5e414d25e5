"""Attackers for the security tests: another local user, a bucket writer, a cache crafter.

Tests run as root; "another local user" is ``nobody`` (uid 65534), reached
with ``setpriv`` in a subprocess, so every request really comes from a
second Unix user over real HTTP (``curl``, as in the security review).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cosencfs.fs.core import Filesystem
from tests.testlib import Mount, force_unmount, is_mounted

NOBODY = 65534
LOCAL_HOST = "local-1250000000.cos.ap-guangzhou.myqcloud.com"
_LISTENING = re.compile(r"local COS server on http://127\.0\.0\.1:(\d+)")

need_tools = pytest.mark.skipif(
    not (shutil.which("setpriv") and shutil.which("curl")), reason="needs setpriv and curl"
)


def as_nobody(
    *argv: str, stdin: bytes | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` as user nobody (no supplementary groups)."""
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *argv],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    raw_headers: str
    body: bytes


def curl_as_nobody(
    port: int,
    target: str,
    *,
    method: str = "GET",
    host: str = LOCAL_HOST,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> Answer:
    """One HTTP request by user nobody with curl; ``target`` is sent as is."""
    argv = ["curl", "-s", "-i", "--path-as-is", "--max-time", "20"]
    argv += ["-I"] if method == "HEAD" else ["-X", method]
    argv += ["-H", f"Host: {host}"]
    headers = dict(headers or {})
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    if body is not None:
        argv += ["--data-binary", "@-"]
        if not any(k.lower() == "content-type" for k in headers):
            argv += ["-H", "Content-Type:"]  # not curl's form-urlencoded default
    argv.append(f"http://127.0.0.1:{port}{target}")
    done = as_nobody(*argv, stdin=body)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return parse_http(done.stdout)


def parse_http(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(status, headers, head.decode("latin-1"), body)


def public_dir(prefix: str) -> Path:
    """A directory under /tmp that nobody may enter (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(0o755)
    return d


@dataclass(slots=True)
class LocalMount:
    """``cosencfs mount --local DIR MOUNTPOINT --foreground``, as root."""

    data_dir: Path
    mountpoint: Path
    log_path: Path
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    def start(self, timeout: float = 30.0) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "cosencfs", "mount", "--local", str(self.data_dir)]
        cmd += [str(self.mountpoint), "--foreground", "--writeback-delay", "0.2", *self.extra]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"--local mount did not come up:\n{self.log()}")
            time.sleep(0.05)
        m = _LISTENING.search(self.log())
        assert m, self.log()
        self.port = int(m.group(1))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None and is_mounted(self.mountpoint):
            umount = ["fusermount3", "-u", str(self.mountpoint)]
            subprocess.run(umount, check=False, capture_output=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        force_unmount(self.mountpoint)


@contextlib.contextmanager
def local_mount(
    data_dir: Path, mountpoint: Path, log_path: Path, *extra: str
) -> Iterator[LocalMount]:
    m = LocalMount(data_dir, mountpoint, log_path, list(extra))
    try:
        m.start()
        yield m
    finally:
        m.stop()


@dataclass
class PrefixedMount(Mount):
    """A ``Mount`` whose command runs under a wrapper (``setpriv ...``)."""

    wrapper: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        return [*self.wrapper, *super().command()]


def proc_text(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll until ``predicate()`` is true (no timing in the assertion itself)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def count_lines(text: str, needle: str) -> int:
    return sum(1 for line in text.splitlines() if needle in line)


# ---------------------------------------------------------------- filesystem API

ROOT_INO = 1


async def fs_write(fs: Filesystem, name: str, data: bytes, *, sync: bool = True) -> int:
    fh, entry = await fs.create(ROOT_INO, name.encode(), 0o640, os.O_WRONLY | os.O_CREAT, 0, 0)
    await fs.write(fh, 0, data)
    await fs.flush(fh)
    if sync:
        await fs.fsync(fh, False)
    await fs.release(fh)
    return entry.ino


async def fs_read(fs: Filesystem, ino: int) -> bytes:
    fh, _ = await fs.open(ino, os.O_RDONLY)
    try:
        out = bytearray()
        while chunk := await fs.read(fh, len(out), 1 << 20):
            out += chunk
        return bytes(out)
    finally:
        await fs.release(fh)


async def fs_names(fs: Filesystem, ino: int = ROOT_INO) -> list[str]:
    dh = await fs.opendir(ino)
    try:
        return [n.decode() for n, _, _ in fs.readdir(dh, 0)]
    finally:
        await fs.releasedir(dh)
