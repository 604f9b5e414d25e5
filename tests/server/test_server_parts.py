"""The parts of the request path, one by one: parsing, bodies, latency, dispatch, answers.

The HTTP tests drive them together through sockets; these pin down each
seam (where a connection is accepted, where latency is charged, what a
reset looks like) without one.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import threading
import time
from email.message import Message
from pathlib import Path
from typing import cast

import pytest

from cosencfs.faults import FaultInjector, FaultKind
from cosencfs.server import dispatch
from cosencfs.server.bodies import finish, request_body
from cosencfs.server.errors import CosError
from cosencfs.server.responses import error_response, send_response
from cosencfs.server.routing import Op, Response, request_from
from cosencfs.server.stats import Stats

VHOST = "b-1250000000.cos.ap-guangzhou.myqcloud.com"


def _headers(**values: str) -> Message:
    msg = Message()
    for name, value in values.items():
        msg[name.replace("_", "-")] = value
    return msg


def test_request_from_addresses_and_classifies() -> None:
    req, bad = request_from("GET", "/dir/k", "uploadId=7&x=", _headers(Host=VHOST))
    assert bad is None
    assert (req.bucket, req.key, req.op, req.s3) == ("b-1250000000", "dir/k", Op.LIST_PARTS, False)
    assert req.query == {"uploadId": "7", "x": ""}
    path_style, _ = request_from("PUT", "/b/k", "", _headers(Host="127.0.0.1:9"))
    assert (path_style.bucket, path_style.key, path_style.s3) == ("b", "k", True)
    signed_s3, _ = request_from("GET", "/k", "", _headers(Host=VHOST, Authorization="AWS a:b"))
    assert signed_s3.s3


def test_request_from_keeps_a_bad_address_for_later() -> None:
    req, bad = request_from("GET", "/%FF", "", _headers(Host=VHOST))
    assert bad is not None
    assert bad.code == "InvalidURI"
    assert req.op is Op.UNSUPPORTED
    assert req.key is None


def test_request_body_and_finish() -> None:
    buf = memoryview(bytearray(4))
    body = request_body(_headers(Content_Length="10"), io.BytesIO(b"0123456789rest"))
    assert body.readinto(buf) == 4
    assert finish(body, buf) is False
    assert body.count == 10
    chunked = request_body(_headers(Transfer_Encoding="chunked"), io.BytesIO(b"zz\r\nabc\r\n"))
    assert finish(chunked, buf) is True  # unreadable framing: close the connection
    with pytest.raises(CosError, match="Content-Length"):
        request_body(_headers(Content_Length="ten"), io.BytesIO(b""))


def test_latency_is_charged_once_per_request_and_stops_with_the_server() -> None:
    stopping = threading.Event()
    faults = FaultInjector(latency_ms=0)
    t0 = time.monotonic()
    faults.charge_latency(stopping)
    faults.set(0.0, latency_ms=60_000)
    stopping.set()  # a stopping server does not wait out the latency
    faults.charge_latency(stopping)
    assert time.monotonic() - t0 < 30


class _Ctx:
    """What ``dispatch.serve`` reads of a ``ServerContext`` before an operation runs."""

    def __init__(self, fault: FaultKind | None) -> None:
        self.faults = FaultInjector(seed=1)
        self.faults.pick = lambda is_copy: fault  # type: ignore[method-assign]
        self.stopping = threading.Event()
        self.stats = Stats()


@pytest.mark.parametrize(
    ("fault", "status"), [(FaultKind.INTERNAL_ERROR, 500), (FaultKind.SLOW_DOWN, 503)]
)
def test_dispatch_injects_faults_after_reading_the_body(fault: FaultKind, status: int) -> None:
    ctx = _Ctx(fault)
    req, _ = request_from("PUT", "/k", "", _headers(Host=VHOST, Content_Length="3"))
    body = request_body(req.headers, io.BytesIO(b"abc"))
    resp = dispatch.serve(ctx, req, body, memoryview(bytearray(16)))  # type: ignore[arg-type]
    assert (resp.status, resp.reset, resp.close) == (status, False, False)
    assert ctx.stats.snapshot()["bytes_in"] == 3


def test_dispatch_answers_a_reset_with_no_answer() -> None:
    ctx = _Ctx(FaultKind.RESET)
    req, _ = request_from("GET", "/k", "", _headers(Host=VHOST))
    body = request_body(req.headers, io.BytesIO(b""))
    resp = dispatch.serve(ctx, req, body, memoryview(bytearray(16)))  # type: ignore[arg-type]
    assert resp.reset
    assert resp.close


def test_dispatch_answers_a_bad_address_without_delay_or_fault() -> None:
    ctx = _Ctx(FaultKind.RESET)
    ctx.faults.set(0.0, latency_ms=60_000)  # would hang the test if charged
    req, bad = request_from("GET", "/%FF", "", _headers(Host=VHOST))
    body = request_body(req.headers, io.BytesIO(b""))
    resp = dispatch.serve(ctx, req, body, memoryview(bytearray(16)), bad)  # type: ignore[arg-type]
    assert (resp.status, resp.reset) == (400, False)


def _written(resp: Response, method: str = "GET", *, close: bool = False) -> tuple[bytes, bool]:
    a, b = socket.socketpair()
    try:
        # Unbuffered, as the server's own wfile: headers go out before the sendfile body.
        wfile = cast(io.BufferedIOBase, a.makefile("wb", buffering=0))
        stats = Stats()
        closed = send_response(wfile, a, stats, method, None, resp, close=close)
        wfile.close()
        a.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := b.recv(65536):
            out += chunk
        return out, closed
    finally:
        a.close()
        b.close()


def test_send_response_writes_headers_and_body() -> None:
    out, closed = _written(Response(200, [("ETag", '"e"')], b"body"))
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\nServer: tencent-cos\r\n")
    assert b"Content-Length: 4" in head
    assert b'ETag: "e"' in head
    assert (body, closed) == (b"body", False)
    out, closed = _written(Response(200, body=b"body"), "HEAD", close=True)
    assert out.endswith(b"Connection: close\r\n\r\n")
    assert closed


def test_send_response_sends_a_file_and_closes_its_fd(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDONLY)
    out, closed = _written(Response(206, file_fd=fd, file_offset=2, content_length=5))
    assert out.endswith(b"\r\n\r\n23456")
    assert not closed
    with pytest.raises(OSError) as e:
        os.fstat(fd)
    assert e.value.errno == errno.EBADF


def test_send_response_refuses_control_characters_in_headers() -> None:
    out, closed = _written(Response(200, [("x-cos-meta-a", "b\r\nEvil: 1")], b"x"))
    assert out.startswith(b"HTTP/1.1 500 ")
    assert b"Evil" not in out
    assert closed


def test_error_response_has_no_body_on_head() -> None:
    head, _ = request_from("HEAD", "/k", "", _headers(Host=VHOST))
    resp = error_response(head, CosError("NoSuchKey"))
    assert (resp.status, resp.body, resp.content_length) == (404, b"", 0)
    assert ("x-cos-error-code", "NoSuchKey") in resp.headers
    get, _ = request_from("GET", "/k", "", _headers(Host=VHOST))
    assert b"<Code>NoSuchKey</Code>" in error_response(get, CosError("NoSuchKey")).body
