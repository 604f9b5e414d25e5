"""Writes racing uploads through a real mount: sync, fsync, max_dirty_age, streamed
parts, umount.  The same assertions as test_races_fs.py, with the objects read
through cos-python-sdk-v5 (raw for the envelopes, CosEncryptionClient for the
content after umount).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cosencfs.server import LocalCosServer
from tests.keystream._helpers import (
    MIB,
    Findings,
    LedgerSlice,
    Reference,
    SdkBucket,
    Versions,
    cli,
    mount_config,
)
from tests.testlib import Mount, MountFactory

pytestmark = [pytest.mark.mount, pytest.mark.slow]

KIB = 1024
SYNC = "user.cosencfs.sync"


class Race:
    """A file in a mount, its reference copy, the sampled versions and the findings."""

    def __init__(self, m: Mount, sdk: SdkBucket, name: str) -> None:
        self.m, self.sdk, self.name = m, sdk, name
        self.path = m.mountpoint / name
        self.ref = Reference()
        self.found = Findings()
        self.versions = Versions()
        self.etags: set[str] = set()
        self.writes = 0
        self.lock = threading.Lock()  # the reference is shared by writer threads

    def create(self, size: int, rng: random.Random) -> None:
        """The file with ``size`` random bytes, uploaded before the race."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for off in range(0, size, MIB):
                self.pwrite(fd, off, rng.randbytes(min(MIB, size - off)))
            self.fsync(fd)
        finally:
            os.close(fd)

    def pwrite(self, fd: int, off: int, data: bytes) -> None:
        self.writes += 1
        try:
            n = os.pwrite(fd, data, off)
        except OSError as exc:
            with self.lock:
                self.found.add("pwrite failed", f"{off}+{len(data)}: {exc}")
                self.ref.failed(off, len(data))
            return
        with self.lock:
            if n != len(data):
                self.found.add("short write", f"{off}+{len(data)} wrote {n}")
                self.ref.failed(off, len(data))
            else:
                self.ref.write(off, data)

    def sample(self) -> None:
        got = self.sdk.sample(self.name, self.etags)
        if got is not None:
            self.versions.record(self.name, *got)

    def fsync(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            self.found.add("fsync failed", str(exc))
            return
        self.sample()

    def sync(self) -> None:
        try:
            os.setxattr(self.m.mountpoint, SYNC, b"1")
        except OSError as exc:
            self.found.add("sync failed", str(exc))
            return
        self.sample()

    def finish(self, ledger: LedgerSlice, min_versions: int = 3) -> None:
        """Unmount (everything goes up), then compare the object with the reference."""
        assert self.m.umount() == 0, self.m.log()[-3000:]
        self.sample()
        self.found.extend("lost in COS", self.ref.lost(self.sdk.decrypted(self.name)))
        self.found.extend("envelope with two bodies", self.versions.reused())
        self.found.extend("keystream ledger", ledger.violations())
        tracebacks = self.m.log().count("Traceback")
        if tracebacks:
            self.found.add("daemon log", f"{tracebacks} tracebacks, e.g. {_first_error(self.m)}")
        assert self.writes, "nothing raced"
        assert self.versions.samples >= min_versions, "nothing raced"
        self.found.check()


def beside(other: Callable[[], None], main: Callable[[], None], found: Findings) -> None:
    """Run ``main`` with ``other`` looping in a thread until ``main`` returns."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                other()
            except Exception as exc:  # a broken sampler must not pass silently
                found.add("error beside the writer", f"{type(exc).__name__}: {exc}")
                time.sleep(0.05)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        main()
    finally:
        stop.set()
        t.join(120)


def _offset(rng: random.Random, size: int, n: int, cap: int = 6 * MIB) -> int:
    """In place (aligned; half of them in the first 32 blocks), or one in five an append."""
    if rng.randrange(5) == 0 and size + n <= cap:
        return size
    blocks = max(1, size // n)
    return rng.randrange(min(blocks, 32) if rng.randrange(2) else blocks) * n


def _first_error(m: Mount) -> str:
    lines = m.log().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            rest = [x for x in lines[i + 1 :] if x and not x.startswith(" ")]
            return rest[0] if rest else "?"
    return "?"


@pytest.fixture
def sdk(server: LocalCosServer, key_file: Path) -> Iterator[SdkBucket]:
    bucket = SdkBucket(server.port, key_file)
    yield bucket
    bucket.close()


#: (write size, pwrite calls, file size): 1 MiB in place into a 4 MiB file is the
#: reported case. Every upload is followed by a copy of the whole file under a
#: new key: the 4 KiB case uses a smaller file to keep the test short.
SIZES = [
    pytest.param(MIB, 40, 4 * MIB, id="1MiB"),
    pytest.param(4 * KIB, 200, MIB, id="4KiB"),
]


@pytest.mark.parametrize(("n", "count", "size"), SIZES)
def test_pwrites_racing_the_sync_xattr(
    mounts: MountFactory, sdk: SdkBucket, ledger_slice: LedgerSlice, n: int, count: int, size: int
) -> None:
    """(a) pwrite() in place and appends while another thread loops ``cosencfs sync``."""
    r = Race(mounts(), sdk, "a.bin")
    rng = random.Random(21)
    r.create(size, rng)
    fd = os.open(r.path, os.O_RDWR)

    def writer() -> None:
        for _ in range(count):
            r.pwrite(fd, _offset(rng, len(r.ref), n, size + 2 * MIB), rng.randbytes(n))

    try:
        beside(r.sync, writer, r.found)
    finally:
        os.close(fd)
    done = cli("sync", "-q", str(r.m.mountpoint))  # the command itself, once
    if done.returncode:
        r.found.add("cosencfs sync failed", done.stderr.strip())
    r.sample()
    r.finish(ledger_slice)


@pytest.mark.parametrize(("n", "count", "size"), SIZES)
def test_pwrites_racing_fsync_of_another_descriptor(
    mounts: MountFactory, sdk: SdkBucket, ledger_slice: LedgerSlice, n: int, count: int, size: int
) -> None:
    """(b) one descriptor writes, a second descriptor of the file fsyncs in a loop."""
    r = Race(mounts(), sdk, "b.bin")
    rng = random.Random(22)
    r.create(size, rng)
    fd = os.open(r.path, os.O_RDWR)
    other = os.open(r.path, os.O_RDONLY)

    def writer() -> None:
        for _ in range(count):
            r.pwrite(fd, _offset(rng, len(r.ref), n, size + 2 * MIB), rng.randbytes(n))

    try:
        beside(lambda: r.fsync(other), writer, r.found)
    finally:
        os.close(other)
        os.close(fd)
    r.finish(ledger_slice)


@pytest.mark.parametrize(("n", "count", "size"), SIZES)
def test_open_file_uploaded_by_max_dirty_age(
    mounts: MountFactory,
    sdk: SdkBucket,
    ledger_slice: LedgerSlice,
    tmp_path: Path,
    n: int,
    count: int,
    size: int,
) -> None:
    """(c) a file held open and written is uploaded every 0.1 s (max_dirty_age)."""
    cfg = mount_config(tmp_path / "mount.toml", max_dirty_age=0.1)
    r = Race(mounts(extra=cfg), sdk, "c.bin")
    rng = random.Random(23)
    r.create(size, rng)
    fd = os.open(r.path, os.O_RDWR)
    pause = 4.0 / count  # the writes span a few seconds: dozens of uploads

    def writer() -> None:
        for _ in range(count):
            r.pwrite(fd, _offset(rng, len(r.ref), n, size + 2 * MIB), rng.randbytes(n))
            time.sleep(pause)

    def watch() -> None:
        r.sample()
        time.sleep(0.03)

    try:
        beside(watch, writer, r.found)
    finally:
        os.close(fd)
    r.finish(ledger_slice)


def test_streamed_parts_while_writes_land_below_part_boundaries(
    mounts: MountFactory, sdk: SdkBucket, ledger_slice: LedgerSlice, tmp_path: Path
) -> None:
    """(d) a sequential writer past single_put_max streams 8 MiB parts; another
    descriptor pwrite()s just below part boundaries (and anywhere before the end)."""
    cfg = mount_config(tmp_path / "mount.toml", single_put_max="8M")
    r = Race(mounts(extra=cfg), sdk, "d.bin")
    rng = random.Random(24)
    other_rng = random.Random(25)
    total, part = 26 * MIB, 8 * MIB
    fd = os.open(r.path, os.O_RDWR | os.O_CREAT, 0o644)
    other = os.open(r.path, os.O_RDWR)
    stop = threading.Event()

    def below() -> None:
        while not stop.is_set():
            with r.lock:
                end = len(r.ref)
            if end < part + 64 * KIB:
                time.sleep(0.005)
                continue
            size = other_rng.choice([4 * KIB, 64 * KIB, MIB])
            boundary = other_rng.randrange(1, end // part + 1) * part
            off = max(0, boundary - other_rng.choice([size, size // 2, 16]))
            if other_rng.randrange(3) == 0:
                off = other_rng.randrange(max(1, end - size))
            r.pwrite(other, off, other_rng.randbytes(size))
            time.sleep(0.05)

    t = threading.Thread(target=below, daemon=True)
    t.start()
    try:
        for off in range(0, total, MIB):
            r.pwrite(fd, off, rng.randbytes(MIB))
    finally:
        stop.set()
        t.join(120)
    r.fsync(other)
    os.close(other)
    os.close(fd)
    r.finish(ledger_slice, min_versions=1)


def test_umount_right_after_the_last_close(
    mounts: MountFactory, sdk: SdkBucket, ledger_slice: LedgerSlice
) -> None:
    """(e) ``cosencfs umount`` the moment the last descriptor is closed, with the
    write-back of that close already starting (no delay); remount, again."""
    rng = random.Random(26)
    found, versions, seen = Findings(), Versions(), set[str]()
    ref = Reference()
    for i in range(6):
        m = mounts(cache="cache", name="mnt", extra=["--writeback-delay", "0"])
        path = m.mountpoint / "e.bin"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for _ in range(rng.randrange(3, 12)):
                n = rng.choice([4 * KIB, 100 * KIB, MIB])
                off = rng.randrange(0, len(ref) + 1) if i else len(ref)
                data = rng.randbytes(n)
                try:
                    os.pwrite(fd, data, off)
                except OSError as exc:
                    found.add("pwrite failed", f"round {i} {off}+{n}: {exc}")
                    ref.failed(off, n)
                else:
                    ref.write(off, data)
        finally:
            os.close(fd)
        status = m.umount()
        if status != 0:
            found.add("umount", f"round {i}: daemon exit status {status}: {m.log()[-500:]}")
        got = sdk.sample("e.bin", seen)
        if got is not None:
            versions.record("e.bin", *got)
        found.extend(f"lost in COS after round {i}", ref.lost(sdk.decrypted("e.bin")))
    found.extend("envelope with two bodies", versions.reused())
    found.extend("keystream ledger", ledger_slice.violations())
    assert versions.samples >= 3
    found.check()
