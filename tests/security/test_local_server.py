"""Other local users against the local COS server: items 1-5 of issue 12.

Each test replays the review's attack as user ``nobody`` over real HTTP and
shows it refused.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cosencfs.fs.control import XATTR_SYNC
from cosencfs.server import LocalCosServer
from cosencfs.server.admin import admin_request
from cosencfs.server.auth import cos_authorization
from cosencfs.server.cli import SECRET_KEY_ENV
from cosencfs.store.cos import CosStore
from tests.security._sec_helpers import (
    LOCAL_HOST,
    as_nobody,
    curl_as_nobody,
    local_mount,
    need_tools,
    proc_text,
    public_dir,
)
from tests.testlib import BUCKET, REGION, SECRET_ID, SECRET_KEY, force_unmount

pytestmark = need_tools
HOST = f"{BUCKET}.cos.{REGION}.myqcloud.com"
SERVER = [sys.executable, "-m", "cosencfs", "local-server"]


# ---------------------------------------------------------------- item 1


@pytest.mark.mount
def test_local_mount_server_refuses_other_users(tmp_path: Path) -> None:
    """The review's attack on a root-owned --local mount, replayed as nobody."""
    mp = public_dir("cosencfs-sec-mp-")
    data, log = tmp_path / "data", tmp_path / "mount.log"
    try:
        with local_mount(data, mp, log, "-o", "allow_other") as m:
            secret = mp / "secret.txt"
            secret.write_bytes(b"root only\n")
            secret.chmod(0o600)
            (mp / "docs").mkdir()
            os.setxattr(mp, XATTR_SYNC, b"1")  # everything in the bucket now
            port = m.port
            # Listing the bucket, reading an envelope (HEAD) and a body.
            assert curl_as_nobody(port, "/").status == 403
            assert curl_as_nobody(port, "/secret.txt", method="HEAD").status == 403
            got = curl_as_nobody(port, "/secret.txt")
            assert got.status == 403
            assert b"AccessDenied" in got.body
            # A plaintext executable dropped into the mount.
            put = curl_as_nobody(
                port,
                "/docs/run.sh",
                method="PUT",
                headers={"x-cos-meta-mode": str(stat.S_IFREG | 0o755)},
                body=b"#!/bin/sh\necho owned\n",
            )
            assert put.status == 403
            # Root's 0600 file copied onto itself as 0644, owned by nobody, envelope kept.
            copy = curl_as_nobody(
                port,
                "/secret.txt",
                method="PUT",
                headers={
                    "x-cos-copy-source": f"{LOCAL_HOST}/secret.txt",
                    "x-cos-metadata-directive": "Replaced",
                    "x-cos-meta-mode": str(stat.S_IFREG | 0o644),
                    "x-cos-meta-uid": "65534",
                },
            )
            assert copy.status == 403
            # And the admin endpoint that would break every signed request.
            assert curl_as_nobody(port, "/_cosencfs/faults?rate=1", method="POST").status == 403
            # The mount's own secret is in no argv and no environment.
            assert m.proc is not None
            for name in ("cmdline", "environ"):
                assert "cosencfs-local-" not in proc_text(m.proc.pid, name)
        # A new mount (a new secret, a fresh cache) shows what the bucket holds.
        with local_mount(data, mp, log, "-o", "allow_other"):
            assert not (mp / "docs" / "run.sh").exists()
            st = (mp / "secret.txt").stat()
            assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0)
            assert (mp / "secret.txt").read_bytes() == b"root only\n"
            denied = as_nobody("cat", str(mp / "secret.txt"))
            assert denied.returncode != 0
            assert b"Permission denied" in denied.stderr
        # Item 5 for the embedded server: its root is private.
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "index.sqlite").stat().st_mode) == 0o600
    finally:
        force_unmount(mp)
        mp.rmdir()


# ---------------------------------------------------------------- item 2


def test_unsigned_admin_requests_are_refused(server: LocalCosServer, store: CosStore) -> None:
    port = server.port
    for method, target in (
        ("POST", "/_cosencfs/faults?rate=1"),
        ("POST", "/_cosencfs/faults?latency_ms=60000"),
        ("POST", "/_cosencfs/reset-stats"),
        ("GET", "/_cosencfs/stats"),
    ):
        answer = curl_as_nobody(port, target, method=method, host="anything")
        assert answer.status == 403, (target, answer.body)
    # A signature must cover the parameters too: a signed request with an
    # unsigned rate= (a captured request replayed with new values) is refused.
    auth = cos_authorization(SECRET_ID, SECRET_KEY, method="POST", path="/_cosencfs/faults")
    answer = curl_as_nobody(
        port,
        "/_cosencfs/faults?rate=1",
        method="POST",
        host="anything",
        headers={"Authorization": auth},
    )
    assert answer.status == 403
    # So nothing changed: faults are off and signed requests still work.
    status, settings = admin_request(
        server.url, "POST", "/_cosencfs/faults", secret_id=SECRET_ID, secret_key=SECRET_KEY
    )
    assert (status, settings) == (200, {"rate": 0.0, "latency_ms": 0})


async def test_signed_requests_still_work_after_the_attempt(
    server: LocalCosServer, store: CosStore
) -> None:
    assert curl_as_nobody(server.port, "/_cosencfs/faults?rate=1", method="POST").status == 403
    for i in range(20):
        await store.put(f"k{i}", b"x", {})
        assert await store.get(f"k{i}") == b"x"
    # The owner's signed admin calls work (tests and benchmarks rely on them).
    status, _ = admin_request(
        server.url,
        "POST",
        "/_cosencfs/faults",
        {"rate": "0", "latency_ms": "0"},
        secret_id=SECRET_ID,
        secret_key=SECRET_KEY,
    )
    assert status == 200
    status, stats = admin_request(
        server.url, "GET", "/_cosencfs/stats", secret_id=SECRET_ID, secret_key=SECRET_KEY
    )
    assert status == 200
    assert stats["requests"]["PutObject"] == 20


# ---------------------------------------------------------------- item 3


INJECT = "/x.txt?response-content-type=text/html%0d%0aX-Injected:%20yes"


@pytest.fixture
def open_server(tmp_path: Path) -> Iterator[LocalCosServer]:
    """A server without credentials (the demo's): anyone may GET, so anyone may try."""
    srv = LocalCosServer(tmp_path / "open", buckets=[BUCKET], region=REGION)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_response_parameters_cannot_inject_headers(open_server: LocalCosServer) -> None:
    port = open_server.port
    assert curl_as_nobody(port, "/x.txt", method="PUT", host=HOST, body=b"hi").status == 200
    answer = curl_as_nobody(port, INJECT, host=HOST)
    assert answer.status == 400
    assert b"InvalidArgument" in answer.body
    assert "x-injected" not in answer.headers
    assert "X-Injected" not in answer.raw_headers
    for param in ("response-content-disposition", "response-cache-control", "response-expires"):
        answer = curl_as_nobody(port, f"/x.txt?{param}=a%0aX-Injected:%20yes", host=HOST)
        assert answer.status == 400, param
        assert "x-injected" not in answer.headers, param
    # A harmless value still works, as in COS.
    answer = curl_as_nobody(port, "/x.txt?response-content-type=text/plain", host=HOST)
    assert (answer.status, answer.headers["content-type"]) == (200, "text/plain")


def test_signed_get_with_unsigned_injection_is_refused(server: LocalCosServer) -> None:
    auth = cos_authorization(SECRET_ID, SECRET_KEY, method="PUT", path="/x.txt")
    put = curl_as_nobody(
        server.port, "/x.txt", method="PUT", host=HOST, headers={"Authorization": auth}, body=b"x"
    )
    assert put.status == 200
    # The signature covers the path only; response-* parameters ride along unsigned.
    auth = cos_authorization(SECRET_ID, SECRET_KEY, method="GET", path="/x.txt")
    answer = curl_as_nobody(server.port, INJECT, host=HOST, headers={"Authorization": auth})
    assert answer.status == 400
    assert "x-injected" not in answer.headers


@pytest.mark.parametrize(
    "value",
    ["a\x01b", "a\x7fb", "text/html\x0bX-Injected: yes"],
    ids=["soh", "del", "vtab"],
)
def test_stored_values_with_control_characters_are_refused(
    open_server: LocalCosServer, value: str
) -> None:
    # curl refuses CR/LF in -H values; other controls go through and are
    # refused by the server, for metadata, stored headers and Content-Type.
    for name in ("x-cos-meta-note", "Cache-Control", "Content-Type"):
        answer = curl_as_nobody(
            open_server.port,
            "/m.txt",
            method="PUT",
            host=HOST,
            headers={name: value},
            body=b"x",
        )
        assert answer.status == 400, (name, answer.body)
    assert curl_as_nobody(open_server.port, "/m.txt", host=HOST).status == 404


# ---------------------------------------------------------------- item 4


def test_local_server_secret_key_is_not_on_the_command_line(tmp_path: Path) -> None:
    root = tmp_path / "root"
    secret = "s3cr3t-0123456789-abcdef"
    env = {**os.environ, SECRET_KEY_ENV: secret}
    proc = subprocess.Popen(
        [*SERVER, "--root", str(root), "--bucket", BUCKET, "--secret-id", SECRET_ID],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("listening on "), proc.stderr.read() if proc.stderr else ""
        port = int(line.strip().rsplit(":", 1)[1])
        # What any user sees (ps reads /proc/PID/cmdline) holds no key ...
        seen = as_nobody("cat", f"/proc/{proc.pid}/cmdline")
        assert seen.returncode == 0
        assert secret.encode() not in seen.stdout
        if os.path.exists("/bin/ps"):
            ps = as_nobody("ps", "-eo", "args")
            assert ps.returncode == 0
            assert secret.encode() not in ps.stdout
        # ... and the environment is the owner's only.
        assert as_nobody("cat", f"/proc/{proc.pid}/environ").returncode != 0
        # The key is in use: signed with it is accepted, unsigned is not.
        auth = cos_authorization(SECRET_ID, secret, method="PUT", path="/k")
        headers = {"Authorization": auth}
        put = curl_as_nobody(port, "/k", method="PUT", host=HOST, headers=headers, body=b"v")
        assert put.status == 200
        assert curl_as_nobody(port, "/k", host=HOST).status == 403
    finally:
        proc.terminate()
        proc.wait(30)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


def _run_server(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Start local-server with ``args``; it must fail before listening (else killed)."""
    return subprocess.run(
        [*SERVER, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


def test_secret_key_file_must_be_private(tmp_path: Path) -> None:
    key = tmp_path / "secret"
    key.write_text("from-a-file\n")
    key.chmod(0o644)
    r = _run_server(
        "--root", str(tmp_path / "r"), "--secret-id", "i", "--secret-key-file", str(key)
    )
    assert r.returncode == 2
    assert "chmod 600" in r.stderr
    assert "from-a-file" not in r.stderr


def test_secret_key_file_is_used(tmp_path: Path) -> None:
    key = tmp_path / "secret"
    key.write_text("from-a-file\n")
    key.chmod(0o600)
    proc = subprocess.Popen(
        [
            *SERVER,
            "--root",
            str(tmp_path / "r"),
            "--bucket",
            BUCKET,
            "--secret-id",
            SECRET_ID,
            "--secret-key-file",
            str(key),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().decode().strip().rsplit(":", 1)[1])
        auth = cos_authorization(SECRET_ID, "from-a-file", method="GET", path="/")
        answer = curl_as_nobody(port, "/", host=HOST, headers={"Authorization": auth})
        assert answer.status == 200
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_secret_key_flag_warns(tmp_path: Path) -> None:
    # Without --secret-id the server stops after the warning, before listening.
    r = _run_server("--root", str(tmp_path / "r"), "--secret-key", "x")
    assert r.returncode == 2
    assert "--secret-key shows the key to every local user" in r.stderr


# ---------------------------------------------------------------- item 5


def test_server_root_is_private(tmp_path: Path) -> None:
    root = tmp_path / "pub" / "root"
    (tmp_path / "pub").mkdir()
    srv = LocalCosServer(root, buckets=[BUCKET])
    srv.start()
    try:
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm", ".lock"):
            path = root / name
            if path.exists():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        for sub in ("data", "tmp", "data/00"):
            assert stat.S_IMODE((root / sub).stat().st_mode) == 0o700, sub
    finally:
        srv.stop()
    # Where nobody can reach the parent, the root itself still says no.
    public = public_dir("cosencfs-sec-root-")
    try:
        srv = LocalCosServer(public / "root", buckets=[BUCKET])
        srv.start()
        srv.stop()
        assert as_nobody("ls", str(public / "root")).returncode != 0
        assert as_nobody("cat", str(public / "root" / "index.sqlite")).returncode != 0
    finally:
        subprocess.run(["rm", "-rf", str(public)], check=False)


def test_older_looser_server_root_is_tightened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "old"
    srv = LocalCosServer(root, buckets=[BUCKET])
    srv.start()
    srv.stop()
    root.chmod(0o755)  # what earlier releases made
    (root / "index.sqlite").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="cosencfs.server.perms"):
        srv = LocalCosServer(root, buckets=[BUCKET])
        srv.start()
        srv.stop()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "index.sqlite").stat().st_mode) == 0o600
    assert sum("made private" in r.getMessage() for r in caplog.records) == 1
