"""Running cosencfs as a service: systemd unit, sd_notify, mount(8)/fstab, stats, sync."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from cosencfs.server import LocalCosServer
from cosencfs.store.cos import CosStore
from tests.testlib import (
    BUCKET,
    REGION,
    SECRET_ID,
    SECRET_KEY,
    MountFactory,
    force_unmount,
    is_mounted,
)

pytestmark = pytest.mark.mount

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "cosencfs@.service"
COSENCFS_BIN = Path(sys.executable).with_name("cosencfs")


def write_config(
    path: Path,
    server: LocalCosServer,
    key_file: Path,
    mountpoint: Path,
    cache: Path,
    extra: str = "",
) -> Path:
    creds = path.with_suffix(".creds")
    creds.write_text(f'secret_id = "{SECRET_ID}"\nsecret_key = "{SECRET_KEY}"\n')
    creds.chmod(0o600)
    path.write_text(
        f'bucket = "{BUCKET}"\nmountpoint = "{mountpoint}"\nendpoint = "{server.url}"\n'
        f'region = "{REGION}"\n[credentials]\nfile = "{creds}"\n[keys]\nkey_file = "{key_file}"\n'
        f'[cache]\ndir = "{cache}"\n{extra}'
    )
    return path


def test_unit_file_verifies(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    unit = tmp_path / "cosencfs@test.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/cosencfs", str(COSENCFS_BIN)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "cosencfs" not in done.stderr, done.stderr
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "Restart=on-failure",
        "After=network-online.target",
        "Wants=network-online.target",
        "TimeoutStopSec=",
    ):
        assert line in text
    for namespacing in ("PrivateTmp=", "ProtectSystem=", "ProtectHome="):
        assert namespacing not in text  # would hide the mount from the host


def test_ready_only_once_mounted_and_stop_uploads(
    server: LocalCosServer, store: CosStore, key_file: Path, tmp_path: Path
) -> None:
    mp = tmp_path / "mp"
    mp.mkdir()
    cfg = write_config(
        tmp_path / "svc.toml",
        server,
        key_file,
        mp,
        tmp_path / "cache",
        "[fs]\nwriteback_delay = 3600\n",
    )
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path))
    with open(tmp_path / "mount.log", "wb") as log:
        proc = subprocess.Popen(
            [str(COSENCFS_BIN), "mount", "--config", str(cfg), "--foreground"],
            env=env,
            stderr=log,
        )
    try:
        messages: list[str] = []
        while not any("READY=1" in m for m in messages):
            msg = sock.recv(4096).decode()
            # The mount must be live the moment READY=1 arrives.
            if "READY=1" in msg:
                assert is_mounted(mp), "READY=1 before the mountpoint was live"
            messages.append(msg)
        assert any("STATUS=mounted" in m for m in messages)
        data = os.urandom(100_000)
        (mp / "f.bin").write_bytes(data)
        proc.send_signal(signal.SIGTERM)
        stopping = ""
        while "STOPPING=1" not in stopping:
            stopping = sock.recv(4096).decode()
        assert "uploading 1 dirty files" in stopping
        assert proc.wait(60) == 0
        assert not is_mounted(mp)
    finally:
        sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        force_unmount(mp)

    async def check() -> None:
        info = await store.head("f.bin")
        assert info.size == 100_000

    trio.run(check)


@pytest.fixture
def usr_local_cosencfs() -> object:
    """mount.fuse3 runs `cosencfs` from a fixed PATH (/usr/local/bin and system dirs)."""
    link = Path("/usr/local/bin/cosencfs")
    created = False
    if not link.exists():
        link.symlink_to(COSENCFS_BIN)
        created = True
    elif link.resolve() != COSENCFS_BIN.resolve():
        pytest.skip(f"{link} is another cosencfs")
    yield link
    if created:
        link.unlink()


def test_mount_t_fuse_cosencfs_and_fstab(
    server: LocalCosServer, key_file: Path, tmp_path: Path, usr_local_cosencfs: object
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mount(8) needs root")
    mp = tmp_path / "mp"
    mp.mkdir()
    cfg = write_config(tmp_path / "x.toml", server, key_file, mp, tmp_path / "cache")
    done = subprocess.run(
        ["mount", "-t", "fuse.cosencfs", BUCKET, str(mp), "-o", f"config={cfg},_netdev"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    try:
        assert done.returncode == 0, done.stderr
        assert is_mounted(mp)
        (mp / "via-mount.txt").write_text("hello\n")
        pid = int(os.getxattr(mp, b"user.cosencfs.pid"))
        subprocess.run(["umount", str(mp)], check=True, timeout=60)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        # The same mount from an fstab line.
        fstab = tmp_path / "fstab"
        fstab.write_text(f"{BUCKET} {mp} fuse.cosencfs config={cfg},_netdev,nofail 0 0\n")
        done = subprocess.run(
            ["mount", "--fstab", str(fstab), str(mp)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert (mp / "via-mount.txt").read_text() == "hello\n"
        subprocess.run([str(COSENCFS_BIN), "umount", str(mp)], check=True, timeout=60)
    finally:
        force_unmount(mp)


def test_stats_and_sync(mounts: MountFactory, server: LocalCosServer) -> None:
    m = mounts(extra=["--writeback-delay", "3600"])
    for i in range(5):
        (m.mountpoint / f"f{i}").write_bytes(os.urandom(10_000))
    out = subprocess.run(
        [str(COSENCFS_BIN), "stats", str(m.mountpoint), "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    stats = json.loads(out)
    assert stats["dirty"]["files"] == 5
    assert stats["dirty"]["bytes"] == 50_000
    assert stats["store"]["requests"]["ListObjects"] >= 1
    assert "PutObject" not in stats["store"]["requests"]
    server.reset_stats()
    done = subprocess.run(
        [str(COSENCFS_BIN), "sync", str(m.mountpoint)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert server.stats().get("PutObject") == 5
    stats = json.loads(
        subprocess.run(
            [str(COSENCFS_BIN), "stats", str(m.mountpoint), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert stats["dirty"]["files"] == 0
    assert stats["store"]["requests"]["PutObject"] == 5
    assert stats["cost_units"]["write"] == pytest.approx(5 / 10_000)
    text = subprocess.run(
        [str(COSENCFS_BIN), "stats", str(m.mountpoint)], capture_output=True, text=True, check=True
    ).stdout
    assert "request units" in text
    assert "PutObject" in text
