"""S3 mode: path-style addressing, x-amz-* headers, unsigned S3 auth, aws-chunked bodies."""

from __future__ import annotations

import hashlib
import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cosencfs.server import LocalCosServer
from tests.server._server_helpers import SECRET_ID, SECRET_KEY, Http

S3_BUCKET = "s3bucket"
AWS4 = (
    "AWS4-HMAC-SHA256 Credential=AKIDlocaltest/20240101/us-east-1/s3/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64
)


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[LocalCosServer]:
    with LocalCosServer(
        tmp_path / "s3",
        buckets=[S3_BUCKET],
        secret_id=SECRET_ID,
        secret_key=SECRET_KEY,
        allow_unsigned_s3=True,
    ) as srv:
        yield srv


@pytest.fixture
def s3(s3_server: LocalCosServer, make_http: Callable[[int], Http]) -> Http:
    return make_http(s3_server.port)


def s3_request(
    conn: Http,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    status, resp_headers, data = conn.request(
        method,
        path=path,
        body=body,
        headers={"Authorization": AWS4, **(headers or {})},
        host=f"127.0.0.1:{conn.port}",
        sign=False,
    )
    return status, {k.lower(): v for k, v in resp_headers.items()}, data


def strip_ns(xml: bytes) -> ET.Element:
    root = ET.fromstring(xml)
    for el in root.iter():
        el.tag = el.tag.split("}", 1)[-1]
    return root


def test_path_style_put_get_head_with_amz_meta(s3: Http) -> None:
    status, headers, _ = s3_request(
        s3,
        "PUT",
        f"/{S3_BUCKET}/dir/file%20one.txt",
        body=b"s3 body",
        headers={"x-amz-meta-Owner": "me", "Content-Type": "text/plain"},
    )
    assert status == 200
    assert headers["etag"] == f'"{hashlib.md5(b"s3 body").hexdigest()}"'
    assert "x-amz-request-id" in headers
    status, headers, body = s3_request(s3, "GET", f"/{S3_BUCKET}/dir/file%20one.txt")
    assert (status, body) == (200, b"s3 body")
    assert headers["x-amz-meta-owner"] == "me"
    assert "x-cos-meta-owner" not in headers
    assert headers["content-type"] == "text/plain"
    status, headers, body = s3_request(s3, "HEAD", f"/{S3_BUCKET}/dir/file%20one.txt")
    assert (status, body, headers["content-length"]) == (200, b"", "7")
    status, _, body = s3_request(s3, "HEAD", f"/{S3_BUCKET}/missing")
    assert (status, body) == (404, b"")


def test_list_objects_v2(s3: Http) -> None:
    for key in ["a/1", "a/2", "b", "c/3", "d"]:
        assert s3_request(s3, "PUT", f"/{S3_BUCKET}/{key}", body=b"x")[0] == 200
    status, _, body = s3_request(s3, "GET", f"/{S3_BUCKET}?list-type=2&delimiter=/&max-keys=2")
    assert status == 200
    page = strip_ns(body)
    assert page.findtext("KeyCount") == "2"
    assert page.findtext("IsTruncated") == "true"
    assert [p.text for p in page.iter("Prefix") if p.text] == ["a/"]
    assert [k.text for k in page.iter("Key")] == ["b"]
    token = page.findtext("NextContinuationToken")
    assert token
    status, _, body = s3_request(
        s3, "GET", f"/{S3_BUCKET}?list-type=2&delimiter=/&continuation-token={token}"
    )
    page = strip_ns(body)
    assert [k.text for k in page.iter("Key")] == ["d"]
    assert [p.findtext("Prefix") for p in page.iter("CommonPrefixes")] == ["c/"]
    assert page.findtext("IsTruncated") == "false"
    status, _, body = s3_request(s3, "GET", f"/{S3_BUCKET}?list-type=2&start-after=b")
    assert [k.text for k in strip_ns(body).iter("Key")] == ["c/3", "d"]
    status, _, body = s3_request(s3, "GET", "/")
    assert [n.text for n in strip_ns(body).iter("Name")] == [S3_BUCKET]


def test_s3_copy_and_multi_delete(s3: Http) -> None:
    s3_request(s3, "PUT", f"/{S3_BUCKET}/src", body=b"copy me", headers={"x-amz-meta-a": "1"})
    status, _, body = s3_request(
        s3,
        "PUT",
        f"/{S3_BUCKET}/dst",
        headers={
            "x-amz-copy-source": f"/{S3_BUCKET}/src",
            "x-amz-metadata-directive": "REPLACE",
            "x-amz-meta-b": "2",
        },
    )
    assert status == 200
    assert strip_ns(body).findtext("ETag") == f'"{hashlib.md5(b"copy me").hexdigest()}"'
    status, headers, body = s3_request(s3, "GET", f"/{S3_BUCKET}/dst")
    assert body == b"copy me"
    assert headers.get("x-amz-meta-b") == "2"
    assert "x-amz-meta-a" not in headers
    delete = b"<Delete><Object><Key>src</Key></Object><Object><Key>dst</Key></Object></Delete>"
    status, _, body = s3_request(s3, "POST", f"/{S3_BUCKET}?delete", body=delete)
    assert status == 200
    assert sorted(k.text or "" for k in strip_ns(body).iter("Key")) == ["dst", "src"]
    assert s3_request(s3, "GET", f"/{S3_BUCKET}/src")[0] == 404


def test_unsigned_s3_refused_unless_allowed(
    tmp_path: Path, make_http: Callable[[int], Http]
) -> None:
    with LocalCosServer(
        tmp_path / "strict", buckets=[S3_BUCKET], secret_id=SECRET_ID, secret_key=SECRET_KEY
    ) as srv:
        conn = make_http(srv.port)
        status, _, body = s3_request(conn, "PUT", f"/{S3_BUCKET}/k", body=b"no")
        assert status == 403
        assert b"<Code>AccessDenied</Code>" in body
        status, _, _ = conn.request(
            "GET", path=f"/{S3_BUCKET}/k", headers={"Authorization": "AWS AK:sig"}, sign=False
        )
        assert status == 403


def _aws_chunked(data: bytes, chunk: int, trailer: bool) -> bytes:
    out = b""
    for i in range(0, len(data), chunk):
        piece = data[i : i + chunk]
        ext = b"" if trailer else b";chunk-signature=" + b"a" * 64
        out += f"{len(piece):x}".encode() + ext + b"\r\n" + piece + b"\r\n"
    if trailer:
        return out + b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"
    return out + b"0;chunk-signature=" + b"b" * 64 + b"\r\n\r\n"


@pytest.mark.parametrize("trailer", [False, True])
def test_aws_chunked_bodies(s3: Http, trailer: bool) -> None:
    data = bytes(range(256)) * 1000
    encoded = _aws_chunked(data, 65536, trailer)
    status, _, _ = s3_request(
        s3,
        "PUT",
        f"/{S3_BUCKET}/chunked",
        body=encoded,
        headers={
            "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
            if trailer
            else "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            "Content-Encoding": "aws-chunked",
            "x-amz-decoded-content-length": str(len(data)),
        },
    )
    assert status == 200
    status, headers, body = s3_request(s3, "GET", f"/{S3_BUCKET}/chunked")
    assert body == data
    assert "content-encoding" not in headers


def test_http_chunked_and_expect_continue(s3_server: LocalCosServer, s3: Http) -> None:
    data = b"0123456789" * 50_000
    s3.conn.request(
        "PUT",
        f"/{S3_BUCKET}/te",
        body=iter([data[:123], data[123:400_000], data[400_000:]]),
        headers={"Authorization": AWS4, "Host": "localhost"},
        encode_chunked=True,
    )
    resp = s3.conn.getresponse()
    resp.read()
    assert resp.status == 200
    assert s3_request(s3, "GET", f"/{S3_BUCKET}/te")[2] == data
    with socket.create_connection(("127.0.0.1", s3_server.port), timeout=30) as sock:
        sock.sendall(
            f"PUT /{S3_BUCKET}/expect HTTP/1.1\r\nHost: x\r\nAuthorization: {AWS4}\r\n"
            "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        interim = sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(b"hello")
        final = sock.recv(4096)
        assert final.startswith(b"HTTP/1.1 200 OK\r\n")
    assert s3_request(s3, "GET", f"/{S3_BUCKET}/expect")[2] == b"hello"
