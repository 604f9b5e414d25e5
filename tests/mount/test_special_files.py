"""Fifos, sockets and device nodes through a real mount: round trips, rsync, remounts."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from cosencfs.server import LocalCosServer
from tests.mount.test_tools import sh
from tests.testlib import MountFactory, cd, have

pytestmark = pytest.mark.mount


def test_fifo_round_trip_is_one_put(
    mounts: MountFactory, server: LocalCosServer, tmp_path: Path
) -> None:
    m = mounts()
    (m.mountpoint / "d").mkdir()
    os.setxattr(m.mountpoint, b"user.cosencfs.sync", b"1")
    fifo = m.mountpoint / "d" / "pipe"
    server.reset_stats()
    os.mkfifo(fifo, 0o620)
    os.setxattr(m.mountpoint, b"user.cosencfs.sync", b"1")
    assert server.stats().get("PutObject", 0) == 1, server.stats()
    made = fifo.stat()
    assert stat.S_ISFIFO(made.st_mode)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(made.st_mode) == 0o620 & ~mask
    message = os.urandom(200_000)  # more than a pipe buffer: reader and writer alternate
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with open(fifo, "wb") as f:
                f.write(message)
        except BaseException as exc:  # (reported by the main thread)
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    with open(fifo, "rb") as f:
        got = f.read()
    t.join(30)
    assert not t.is_alive()
    assert not errors
    assert got == message
    m.umount()
    cold = mounts()
    st = (cold.mountpoint / "d" / "pipe").stat()
    assert (st.st_mode, st.st_mtime_ns, st.st_uid) == (made.st_mode, made.st_mtime_ns, made.st_uid)


def test_unix_socket_round_trip(mounts: MountFactory) -> None:
    m = mounts()
    with cd(m.mountpoint):  # a relative name keeps the path under 108 bytes
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.settimeout(30)
        try:
            server.bind("sock")
            server.listen(1)
            assert stat.S_ISSOCK(os.lstat("sock").st_mode)
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.settimeout(30)
            try:
                client.connect("sock")
                conn, _ = server.accept()
                with conn:
                    client.sendall(b"ping")
                    assert conn.recv(16) == b"ping"
                    conn.sendall(b"pong")
                    assert client.recv(16) == b"pong"
            finally:
                client.close()
        finally:
            server.close()
        os.unlink("sock")
        assert not os.path.lexists("sock")


def test_rsync_of_special_files_round_trips_through_a_cold_remount(
    mounts: MountFactory, tmp_path: Path
) -> None:
    if not have("rsync"):
        pytest.skip("rsync not installed")
    if os.geteuid() != 0:
        pytest.skip("mknod of a device node needs root")
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(os.urandom(5000))
    (src / "sub" / "empty").write_bytes(b"")
    os.symlink("../a.txt", src / "sub" / "link")
    os.mkfifo(src / "sub" / "fifo", 0o640)
    os.mknod(src / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(src / "sub" / "disk", stat.S_IFBLK | 0o660, os.makedev(8, 16))
    with cd(src):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind("sock")
        s.close()
    os.chown(src / "sub" / "fifo", 1234, 5678, follow_symlinks=False)
    m = mounts()
    sh(f"rsync -a {src}/ {m.mountpoint}/tree/", tmp_path)
    m.umount()
    cold = mounts()  # a new cache dir: everything from COS
    for direction in (f"{src}/ {cold.mountpoint}/tree/", f"{cold.mountpoint}/tree/ {src}/"):
        out = sh(f"rsync -an --itemize-changes {direction}", tmp_path)
        assert out.strip() == "", f"rsync -an {direction}:\n{out}"
    root = cold.mountpoint / "tree"
    assert stat.S_ISSOCK((root / "sock").lstat().st_mode)
    st = (root / "sub" / "disk").lstat()
    assert stat.S_ISBLK(st.st_mode)
    assert st.st_rdev == os.makedev(8, 16)
    fifo = (root / "sub" / "fifo").lstat()
    assert (fifo.st_uid, fifo.st_gid) == (1234, 5678)
