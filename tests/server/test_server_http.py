"""HTTP details: conditional requests, ranges, errors, keep-alive, odd keys."""

from __future__ import annotations

import base64
import hashlib
import socket
from email.utils import formatdate
from typing import Any

from cosencfs.server import LocalCosServer
from tests.server._server_helpers import BUCKET, Http


def test_conditional_get(plain: Http) -> None:
    status, headers, _ = plain.request("PUT", "c", body=b"conditional")
    etag = headers["ETag"]
    status, headers, body = plain.request("GET", "c", headers={"If-None-Match": etag})
    assert (status, body) == (304, b"")
    assert headers["ETag"] == etag
    status, _, body = plain.request("GET", "c", headers={"If-None-Match": '"other"'})
    assert (status, body) == (200, b"conditional")
    status, _, body = plain.request("GET", "c", headers={"If-Match": '"other"'})
    assert status == 412
    assert b"<Code>PreconditionFailed</Code>" in body
    assert plain.request("GET", "c", headers={"If-Match": etag})[0] == 200
    future = formatdate(2_000_000_000, usegmt=True)
    assert plain.request("GET", "c", headers={"If-Modified-Since": future})[0] == 304
    past = formatdate(1_000_000_000, usegmt=True)
    assert plain.request("GET", "c", headers={"If-Unmodified-Since": past})[0] == 412
    assert plain.request("HEAD", "c", headers={"If-None-Match": etag})[0] == 304


def test_error_shape(plain: Http) -> None:
    status, headers, body = plain.request("GET", "missing key")
    assert status == 404
    assert headers["Content-Type"] == "application/xml"
    assert body.startswith(
        b"<?xml version='1.0' encoding='utf-8' ?>\n<Error><Code>NoSuchKey</Code>"
    )
    for tag in (b"Message", b"Resource", b"RequestId", b"TraceId"):
        assert b"<" + tag + b">" in body
    assert headers["x-cos-request-id"].encode() in body
    assert headers["Server"] == "tencent-cos"
    status, headers, body = plain.request("HEAD", "missing key")
    assert (status, body, headers["x-cos-error-code"]) == (404, b"", "NoSuchKey")


def test_request_ids_are_unique(plain: Http) -> None:
    ids = {plain.request("GET", "")[1]["x-cos-request-id"] for _ in range(20)}
    assert len(ids) == 20


def test_unsupported_requests(plain: Http) -> None:
    status, _, body = plain.request("GET", "", params={"acl": ""})
    assert status == 501
    assert b"NotImplemented" in body
    status, _, body = plain.request("PATCH", "k", body=b"x")
    assert status == 405
    assert b"MethodNotAllowed" in body
    # The connection is still usable after errors with bodies.
    assert plain.request("PUT", "k", body=b"still fine")[0] == 200


def test_content_md5_is_verified_when_sent(plain: Http) -> None:
    good = base64.b64encode(hashlib.md5(b"payload").digest()).decode()
    assert plain.request("PUT", "m", body=b"payload", headers={"Content-MD5": good})[0] == 200
    bad = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    status, _, body = plain.request("PUT", "m2", body=b"payload", headers={"Content-MD5": bad})
    assert status == 400
    assert b"BadDigest" in body
    assert plain.request("GET", "m2")[0] == 404


def test_range_edge_cases(plain: Http) -> None:
    plain.request("PUT", "r", body=b"0123456789")
    status, headers, body = plain.request("GET", "r", headers={"Range": "bytes=2-4,6-7"})
    assert (status, body) == (200, b"0123456789")  # multiple ranges: whole object
    status, headers, body = plain.request("GET", "r", headers={"Range": "bytes=5-2"})
    assert (status, body) == (200, b"0123456789")  # invalid: ignored
    status, headers, body = plain.request("GET", "r", headers={"Range": "bytes=10-"})
    assert status == 416
    assert headers["Content-Range"] == "bytes */10"
    status, headers, body = plain.request("GET", "r", headers={"Range": "bytes=-0"})
    assert status == 416
    plain.request("PUT", "empty", body=b"")
    assert plain.request("GET", "empty")[0:3:2] == (200, b"")
    assert plain.request("GET", "empty", headers={"Range": "bytes=0-"})[0] == 416
    status, headers, body = plain.request("HEAD", "r", headers={"Range": "bytes=3-5"})
    assert (status, headers["Content-Length"], headers["Content-Range"], body) == (
        206,
        "3",
        "bytes 3-5/10",
        b"",
    )


def test_response_header_overrides(plain: Http) -> None:
    plain.request("PUT", "o", body=b"x", headers={"Content-Type": "text/plain"})
    status, headers, _ = plain.request(
        "GET",
        "o",
        params={"response-content-type": "image/png", "response-cache-control": "no-cache"},
    )
    assert status == 200
    assert headers["Content-Type"] == "image/png"
    assert headers["Cache-Control"] == "no-cache"


def test_stored_standard_headers(plain: Http) -> None:
    plain.request(
        "PUT",
        "h",
        body=b"x",
        headers={"Content-Disposition": "attachment", "Cache-Control": "max-age=5"},
    )
    _, headers, _ = plain.request("GET", "h")
    assert headers["Content-Disposition"] == "attachment"
    assert headers["Cache-Control"] == "max-age=5"


def test_keys_the_sdk_encodes_specially(client: Any) -> None:
    for key in ["./dot/./slash", "a/../b", "double//slash", "/leading", "trailing/"]:
        client.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].get_raw_stream().read()
        assert body == key.encode()
    keys = {c["Key"] for c in client.list_objects(Bucket=BUCKET)["Contents"]}
    assert keys == {"./dot/./slash", "a/../b", "double//slash", "leading", "trailing/"}


def test_many_requests_on_one_connection(server: LocalCosServer, plain: Http) -> None:
    for i in range(200):
        assert plain.request("PUT", f"ka/{i}", body=b"v" * i)[0] == 200
    httpd = server._httpd
    assert httpd is not None
    assert len(httpd._connections) == 1


def test_garbage_request_line_gets_an_error(server: LocalCosServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"NOT A VALID REQUEST\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 400 ")


def test_key_that_is_not_utf8(plain: Http) -> None:
    status, _, body = plain.request("GET", path="/%ff%fe", sign=False)
    assert status == 400
    assert b"<Code>InvalidURI</Code>" in body
    assert plain.request("GET", "")[0] == 200  # same connection, still in sync
