"""Persistence across restarts and crash safety (disconnects, SIGKILL, crashes mid-commit)."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from qcloud_cos.cos_exception import CosClientError

from cosencfs.server import LocalCosServer
from cosencfs.server.auth import cos_authorization
from cosencfs.server.cli import SECRET_KEY_ENV
from cosencfs.server.storage import Storage
from tests.server._server_helpers import (
    BUCKET,
    REPO,
    SECRET_ID,
    SECRET_KEY,
    VHOST,
    ClientFactory,
    CliServer,
    Http,
)

MIB = 1024 * 1024


def data_files(root: Path) -> set[str]:
    return {p.name for p in (root / "data").glob("*/*")}


def referenced_files(root: Path) -> set[str]:
    storage = Storage(root)
    try:
        rows = storage.db.execute("SELECT data FROM objects UNION ALL SELECT data FROM parts")
        return {r[0] for r in rows if r[0]}
    finally:
        storage.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def start_put(port: int, key: str, length: int) -> socket.socket:
    """Send the headers of a signed PUT of ``length`` bytes; the caller sends (part of) the body."""
    headers = {"Host": VHOST, "Content-Length": str(length)}
    auth = cos_authorization(SECRET_ID, SECRET_KEY, method="PUT", path="/" + key, headers=headers)
    head = f"PUT /{key} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall((head + f"Authorization: {auth}\r\n\r\n").encode())
    return sock


def test_objects_and_uploads_survive_restart(
    server_root: Path, make_client: ClientFactory, server: LocalCosServer
) -> None:
    client = make_client()
    small, big = os.urandom(100), os.urandom(300_000)
    client.put_object(Bucket=BUCKET, Key="small", Body=small, Metadata={"x-cos-meta-m": "1"})
    client.put_object(Bucket=BUCKET, Key="dir/big", Body=big)
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key="mp")["UploadId"]
    part1 = os.urandom(MIB)
    etag1 = client.upload_part(
        Bucket=BUCKET, Key="mp", Body=part1, PartNumber=1, UploadId=upload_id
    )
    port = server.port
    server.stop()
    with pytest.raises(CosClientError):  # really down: connection refused
        make_client(port=port).head_bucket(Bucket=BUCKET)
    # A new server on the same root and the same port, as tests of outages do.
    with LocalCosServer(
        server_root, port=port, buckets=[BUCKET], secret_id=SECRET_ID, secret_key=SECRET_KEY
    ) as again:
        assert again.port == port
        client = make_client(port=port)
        got = client.get_object(Bucket=BUCKET, Key="small")
        assert got["Body"].get_raw_stream().read() == small
        assert got["x-cos-meta-m"] == "1"
        assert (
            client.get_object(Bucket=BUCKET, Key="dir/big")["Body"].get_raw_stream().read() == big
        )
        parts = client.list_parts(Bucket=BUCKET, Key="mp", UploadId=upload_id)["Part"]
        assert [p["ETag"] for p in parts] == [etag1["ETag"]]
        etag2 = client.upload_part(
            Bucket=BUCKET, Key="mp", Body=b"tail", PartNumber=2, UploadId=upload_id
        )
        client.complete_multipart_upload(
            Bucket=BUCKET,
            Key="mp",
            UploadId=upload_id,
            MultipartUpload={
                "Part": [
                    {"PartNumber": 1, "ETag": etag1["ETag"]},
                    {"PartNumber": 2, "ETag": etag2["ETag"]},
                ]
            },
        )
        whole = client.get_object(Bucket=BUCKET, Key="mp")["Body"].get_raw_stream().read()
        assert whole == part1 + b"tail"


def test_second_server_on_the_same_root_is_refused(server_root: Path, server: Any) -> None:
    with pytest.raises(RuntimeError, match="in use"):
        LocalCosServer(server_root).start()


@pytest.mark.parametrize("length", [50_000, 3 * MIB])
def test_half_sent_put_leaves_no_object(
    server: LocalCosServer, server_root: Path, plain: Http, length: int
) -> None:
    assert plain.request("PUT", "existing", body=b"old version")[0] == 200
    for key in ("existing", "fresh"):
        sock = start_put(server.port, key, length)
        sock.sendall(os.urandom(length // 2))
        sock.close()
    # Wait until the server noticed both disconnects (only our connection is left).
    httpd = server._httpd
    assert httpd is not None
    wait_for(lambda: len(httpd._connections) == 1)
    assert not any((server_root / "tmp").iterdir())
    status, _, body = plain.request("GET", "existing")
    assert (status, body) == (200, b"old version")
    assert plain.request("GET", "fresh")[0] == 404
    assert data_files(server_root) <= referenced_files_live(server)


def referenced_files_live(server: LocalCosServer) -> set[str]:
    storage = server._storage  # the running server's index
    assert storage is not None
    with storage.lock:
        rows = storage.db.execute("SELECT data FROM objects UNION ALL SELECT data FROM parts")
        return {r[0] for r in rows if r[0]}


def test_sigkill_mid_put_keeps_old_object_or_nothing(
    tmp_path: Path, cli_servers: Callable[..., CliServer], make_http: Callable[[int], Http]
) -> None:
    root = tmp_path / "killed"
    keys = ("--secret-id", SECRET_ID)
    env = {SECRET_KEY_ENV: SECRET_KEY}
    first = cli_servers(root, *keys, env=env)
    plain = make_http(first.port)
    old = os.urandom(200_000)
    assert plain.request("PUT", "victim", body=old)[0] == 200
    plain.close()
    socks = []
    for key in ("victim", "newcomer"):
        sock = start_put(first.port, key, 64 * MIB)
        for _ in range(8):  # a slow client: 8 MiB of 64, then the server dies
            sock.sendall(os.urandom(MIB))
            time.sleep(0.01)
        socks.append(sock)
    wait_for(lambda: len(list((root / "tmp").iterdir())) >= 2)
    first.kill()  # SIGKILL
    for sock in socks:
        sock.close()
    assert any((root / "tmp").iterdir()), "the kill should have left temp files behind"
    second = cli_servers(root, *keys, env=env)
    plain = make_http(second.port)
    status, _, body = plain.request("GET", "victim")
    assert (status, body) == (200, old)
    assert plain.request("GET", "newcomer")[0] == 404
    assert not any((root / "tmp").iterdir()), "start-up sweep left temp files"
    second.kill()
    assert data_files(root) == referenced_files(root)


CRASH_SCRIPT = """
import os, sys
sys.path.insert(0, {repo!r})
from cosencfs.server import datafiles, storage as storage_mod, uploads as uploads_mod
from cosencfs.server.storage import Storage
from cosencfs.server.uploads import Uploads

root, point = sys.argv[1], sys.argv[2]
st = Storage(root)
st.create_bucket("b", exist_ok=True)
if point == "put-before-unlink":
    new = st.files.new(); new.write(b"B" * 100_000)
    datafiles.DataFiles.unlink = lambda self, names: os._exit(0)
    st.commit_object("b", "obj", new, size=100_000, etag="x", content_type="t", meta={{}},
                     headers={{}})
up = Uploads(st)
upload_id = up.create("b", "mp", "t", {{}}, {{}})
for n in (1, 2):
    new = st.files.new(); new.write(bytes([n]) * (1024 * 1024))
    import hashlib
    up.commit_part("b", "mp", upload_id, n, new, 1024 * 1024,
                   hashlib.md5(bytes([n]) * (1024 * 1024)).hexdigest())
parts = [(n, hashlib.md5(bytes([n]) * (1024 * 1024)).hexdigest()) for n in (1, 2)]
calls = []
if point == "mid-concatenation":
    real = uploads_mod.copy_range
    def crash_later(*args):
        calls.append(1)
        if len(calls) == 2:
            os._exit(0)
        real(*args)
    uploads_mod.copy_range = crash_later
elif point == "before-commit":
    Storage.commit_row = lambda *a, **k: os._exit(0)
up.complete("b", "mp", upload_id, parts, None)
print("completed")
"""


def run_crash(root: Path, point: str) -> None:
    script = CRASH_SCRIPT.format(repo=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(root), point],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "completed" not in result.stdout


@pytest.mark.parametrize("point", ["mid-concatenation", "before-commit"])
def test_crash_during_complete_leaves_the_upload(tmp_path: Path, point: str) -> None:
    root = tmp_path / "crash"
    run_crash(root, point)
    assert any((root / "tmp").iterdir()) or point == "before-commit"
    storage = Storage(root)  # restart: the sweep runs
    try:
        assert storage.head("b", "mp") is None
        rows = storage.db.execute("SELECT part_number FROM parts ORDER BY part_number").fetchall()
        assert rows == [(1,), (2,)]
    finally:
        storage.close()
    assert not any((root / "tmp").iterdir())
    assert data_files(root) == referenced_files(root)


def test_crash_after_commit_before_cleanup(tmp_path: Path) -> None:
    root = tmp_path / "crash"
    run_crash(root, "put-before-unlink")
    storage = Storage(root)
    try:
        info = storage.head("b", "obj")
        assert info is not None
        assert info.size == 100_000
    finally:
        storage.close()
    assert data_files(root) == referenced_files(root)


def test_startup_sweep_removes_orphans(
    server_root: Path, server: LocalCosServer, plain: Http
) -> None:
    assert plain.request("PUT", "keep", body=os.urandom(200_000))[0] == 200
    assert plain.request("PUT", "inline", body=b"tiny")[0] == 200
    server.stop()
    (server_root / "tmp" / "leftover.tmp").write_bytes(b"partial")
    (server_root / "data" / "ab" / "ab0123orphan").write_bytes(b"orphan")
    before = data_files(server_root)
    with LocalCosServer(server_root, buckets=[BUCKET]) as again:
        assert not any((server_root / "tmp").iterdir())
        assert data_files(server_root) == before - {"ab0123orphan"}
        conn = Http(again.port)
        try:
            assert conn.request("GET", "keep", sign=False)[0] == 200
            assert conn.request("GET", "inline", sign=False)[2] == b"tiny"
        finally:
            conn.close()


def test_fsync_mode_round_trip(tmp_path: Path, make_client: ClientFactory) -> None:
    root = tmp_path / "durable"
    body = os.urandom(2 * MIB)
    with LocalCosServer(root, buckets=[BUCKET], fsync=True) as srv:
        client = make_client(port=srv.port)
        client.put_object(Bucket=BUCKET, Key="small", Body=b"tiny")
        client.put_object(Bucket=BUCKET, Key="big", Body=body)
        source = {"Bucket": BUCKET, "Key": "big", "Region": "ap-guangzhou"}
        client.copy_object(Bucket=BUCKET, Key="copy", CopySource=source)
        sync_mode = srv._storage.db.execute("PRAGMA synchronous").fetchone()[0]  # type: ignore[union-attr]
        assert sync_mode == 2  # FULL
    with LocalCosServer(root, buckets=[BUCKET]) as srv:
        client = make_client(port=srv.port)
        for key, expected in (("small", b"tiny"), ("big", body), ("copy", body)):
            assert (
                client.get_object(Bucket=BUCKET, Key=key)["Body"].get_raw_stream().read()
                == expected
            )


def test_concurrent_writers_and_readers_never_see_torn_objects(
    server: LocalCosServer, make_http: Callable[[int], Http]
) -> None:
    """Overwrites, copies and deletes racing with reads: every read is one whole version."""
    errors: list[str] = []
    sizes = [0, 10, 70_000, 1_500_000]

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        conn = Http(server.port)
        try:
            for _ in range(40):
                key = f"hot/{rng.randrange(3)}"
                action = rng.random()
                if action < 0.35:
                    body = bytes([rng.randrange(256)]) * rng.choice(sizes)
                    status, _, _ = conn.request("PUT", key, body=body)
                    if status != 200:
                        errors.append(f"PUT {status}")
                elif action < 0.5:
                    headers = {"x-cos-copy-source": f"{VHOST}/hot/{rng.randrange(3)}"}
                    status, _, _ = conn.request("PUT", key, headers=headers)
                    if status not in (200, 404):
                        errors.append(f"COPY {status}")
                elif action < 0.6:
                    conn.request("DELETE", key)
                else:
                    status, answer, body = conn.request("GET", key)
                    if status == 200:
                        if f'"{hashlib.md5(body).hexdigest()}"' != answer["ETag"]:
                            errors.append(f"torn read of {key}: {len(body)} bytes")
                    elif status != 404:
                        errors.append(f"GET {status}")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    root = Path(server.root)
    assert data_files(root) == referenced_files_live(server)
