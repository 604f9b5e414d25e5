"""Fault injection, latency, and the admin endpoints."""

from __future__ import annotations

import http.client
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cosencfs.server import LocalCosServer
from tests.server._server_helpers import BUCKET, REGION, VHOST, Http


def outcome(http_: Http, method: str, key: str, **kwargs: Any) -> str:
    """What a request got: 'ok', an error code, '200-error' or 'reset'."""
    try:
        status, _, body = http_.request(method, key, **kwargs)
    except (ConnectionError, http.client.RemoteDisconnected):
        http_.close()
        http_.conn = http.client.HTTPConnection("127.0.0.1", http_.port, timeout=30)
        return "reset"
    if b"<Error>" in body:
        code = body.split(b"<Code>")[1].split(b"</Code>")[0].decode()
        return f"200-{code}" if status == 200 else f"{status}-{code}"
    return "ok" if status < 300 else str(status)


def admin(port: int, method: str, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers={"Host": "anything"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[Callable[..., LocalCosServer]]:
    started: list[LocalCosServer] = []

    def start(name: str = "f", **kwargs: Any) -> LocalCosServer:
        srv = LocalCosServer(tmp_path / name, buckets=[BUCKET], **kwargs)
        srv.start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def run_faulted(srv: LocalCosServer, make_http: Callable[[int], Http], n: int) -> list[str]:
    conn = make_http(srv.port)
    results = []
    copy_headers = {"x-cos-copy-source": f"{VHOST}/src"}
    for i in range(n):
        if i % 2:
            results.append(outcome(conn, "PUT", f"k{i}", body=b"data", sign=False))
        else:
            results.append(outcome(conn, "PUT", "dst", headers=copy_headers, sign=False))
    return results


def test_rate_one_fails_every_request_in_every_way(
    faulty: Callable[..., LocalCosServer], make_http: Callable[[int], Http]
) -> None:
    srv = faulty(fault_seed=1234)
    conn = make_http(srv.port)
    assert conn.request("PUT", "src", body=b"source", sign=False)[0] == 200
    srv.set_faults(1.0)
    results = run_faulted(srv, make_http, 80)
    kinds = Counter(results)
    assert "ok" not in kinds
    assert set(kinds) == {"500-InternalError", "503-SlowDown", "reset", "200-InternalError"}
    # The 200-with-Error kind only ever hits CopyObject (the even requests).
    assert all(r != "200-InternalError" for r in results[1::2])
    srv.set_faults(0.0)
    # Faulted requests had no effect on stored data.
    assert conn.request("GET", "k1", sign=False)[0] == 404
    assert conn.request("GET", "dst", sign=False)[0] == 404
    assert conn.request("GET", "src", sign=False)[2] == b"source"


def test_faults_are_deterministic_for_a_seed(
    faulty: Callable[..., LocalCosServer], make_http: Callable[[int], Http]
) -> None:
    runs = []
    for name in ("a", "b"):
        srv = faulty(name, fault_rate=0.5, fault_seed=99)
        runs.append(run_faulted(srv, make_http, 40))
    assert runs[0] == runs[1]
    assert "ok" in runs[0]
    assert len(set(runs[0])) > 2


def test_rate_zero_never_fails(
    faulty: Callable[..., LocalCosServer], make_http: Callable[[int], Http]
) -> None:
    srv = faulty(fault_rate=0.0, fault_seed=1)
    conn = make_http(srv.port)
    for i in range(50):
        assert outcome(conn, "PUT", f"k{i}", body=b"x", sign=False) == "ok"


def test_latency_is_added(
    faulty: Callable[..., LocalCosServer], make_http: Callable[[int], Http]
) -> None:
    srv = faulty(latency_ms=150)
    conn = make_http(srv.port)
    start = time.monotonic()
    assert conn.request("GET", "", sign=False)[0] == 200
    assert time.monotonic() - start >= 0.15
    srv.set_faults(0.0, latency_ms=0)
    start = time.monotonic()
    for _ in range(10):
        conn.request("GET", "", sign=False)
    assert time.monotonic() - start < 1.2  # 1.5 s if the latency were still there


def test_admin_endpoints(
    faulty: Callable[..., LocalCosServer], make_http: Callable[[int], Http]
) -> None:
    srv = faulty()
    conn = make_http(srv.port)
    conn.request("PUT", "a", body=b"1", sign=False)
    conn.request("PUT", "b", body=b"22", sign=False)
    conn.request("GET", "a", sign=False)
    conn.request("HEAD", "a", sign=False)
    conn.request("GET", "", sign=False)
    conn.request("GET", "missing", sign=False)
    status, stats = admin(srv.port, "GET", "/_cosencfs/stats")
    assert status == 200
    assert stats["requests"] == {
        "PutObject": 2,
        "GetObject": 2,
        "HeadObject": 1,
        "ListObjects": 1,
    }
    assert stats["total"] == 6
    assert stats["bytes_in"] == 3
    assert stats["bytes_out"] > 1
    assert srv.stats() == stats["requests"]
    # Faults set through the admin endpoint; faulted requests are counted too.
    status, settings = admin(srv.port, "POST", "/_cosencfs/faults?rate=1&latency_ms=0")
    assert (status, settings) == (200, {"rate": 1.0, "latency_ms": 0})
    assert outcome(conn, "GET", "a", sign=False) != "ok"
    admin(srv.port, "POST", "/_cosencfs/faults?rate=0")
    assert srv.stats()["GetObject"] == 3
    assert admin(srv.port, "POST", "/_cosencfs/faults?rate=2")[0] == 400
    assert admin(srv.port, "POST", "/_cosencfs/reset-stats")[0] == 200
    assert srv.stats() == {}
    assert admin(srv.port, "GET", "/_cosencfs/stats")[1]["total"] == 0
    srv.reset_stats()
    conn.request("PUT", "c", body=b"1", sign=False)
    assert srv.stats() == {"PutObject": 1}


def test_stats_name_every_operation(client: Any, server: LocalCosServer) -> None:
    client.put_object(Bucket=BUCKET, Key="k", Body=b"v")
    client.get_object(Bucket=BUCKET, Key="k")["Body"].get_raw_stream().read()
    client.head_object(Bucket=BUCKET, Key="k")
    source = {"Bucket": BUCKET, "Key": "k", "Region": REGION}
    client.copy_object(Bucket=BUCKET, Key="k2", CopySource=source)
    client.list_objects(Bucket=BUCKET)
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key="m")["UploadId"]
    etag = client.upload_part(Bucket=BUCKET, Key="m", Body=b"p", PartNumber=1, UploadId=upload_id)
    client.upload_part_copy(
        Bucket=BUCKET, Key="m", PartNumber=2, UploadId=upload_id, CopySource=source
    )
    client.list_parts(Bucket=BUCKET, Key="m", UploadId=upload_id)
    client.list_multipart_uploads(Bucket=BUCKET)
    client.complete_multipart_upload(
        Bucket=BUCKET,
        Key="m",
        UploadId=upload_id,
        MultipartUpload={"Part": [{"PartNumber": 1, "ETag": etag["ETag"]}]},
    )
    other = client.create_multipart_upload(Bucket=BUCKET, Key="n")["UploadId"]
    client.abort_multipart_upload(Bucket=BUCKET, Key="n", UploadId=other)
    client.delete_object(Bucket=BUCKET, Key="k2")
    client.delete_objects(Bucket=BUCKET, Delete={"Object": [{"Key": "m"}]})
    client.create_bucket(Bucket="b2-1250000000")
    client.head_bucket(Bucket="b2-1250000000")
    client.get_bucket_location(Bucket="b2-1250000000")
    client.delete_bucket(Bucket="b2-1250000000")
    assert server.stats() == {
        "PutObject": 1,
        "GetObject": 1,
        "HeadObject": 1,
        "CopyObject": 1,
        "ListObjects": 1,
        "InitiateMultipartUpload": 2,
        "UploadPart": 1,
        "UploadPartCopy": 1,
        "ListParts": 1,
        "ListMultipartUploads": 1,
        "CompleteMultipartUpload": 1,
        "AbortMultipartUpload": 1,
        "DeleteObject": 1,
        "DeleteMultipleObjects": 1,
        "PutBucket": 1,
        "HeadBucket": 1,
        "GetBucketLocation": 1,
        "DeleteBucket": 1,
    }
