"""Writing answers: status line and headers, bodies by ``sendall`` or ``sendfile``, COS errors.

Headers and small bodies go out in one ``sendall``; object bodies go out
with ``sendfile`` from the data file, or over TLS in 1 MiB ``sendall``s
(``socket.sendfile`` on an ``SSLSocket`` falls back to 8 KiB sends: each a
TLS record, a system call and a trip through Python, which made a 256 MiB
GET over https cost the server 4-5x its http time and put that cost into
every https row of the benchmarks).  Every header is checked once more for
control characters before it is sent.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from email.utils import formatdate
from http import HTTPStatus
from io import BufferedIOBase

from cosencfs.server import xmlio
from cosencfs.server.context import safe_header_value
from cosencfs.server.errors import CosError
from cosencfs.server.routing import Request, Response
from cosencfs.server.stats import Stats

log = logging.getLogger(__name__)

_date_cache: tuple[int, str] = (0, "")

#: Bytes read from the data file per ``sendall`` of a body over TLS.
TLS_SEND = 1024 * 1024


def http_now() -> str:
    global _date_cache
    now = int(time.time())
    cached = _date_cache
    if cached[0] != now:
        cached = (now, formatdate(now, usegmt=True))
        _date_cache = cached
    return cached[1]


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def error_response(req: Request, exc: CosError) -> Response:
    """The COS-shaped answer of an error: XML body, or for HEAD an error-code header."""
    headers = [*exc.headers]
    if req.method == "HEAD":
        # No body on HEAD; the SDK reads the code from this header instead.
        headers.append(("x-cos-error-code", exc.code))
        return Response(exc.status, headers, content_length=0)
    xml = xmlio.error_body(exc.code, exc.message, req.resource, req.request_id, os.urandom(8).hex())
    return Response(exc.status, [("Content-Type", "application/xml"), *headers], xml)


def send_response(
    wfile: BufferedIOBase,
    sock: socket.socket,
    stats: Stats,
    method: str,
    req: Request | None,
    resp: Response,
    *,
    close: bool,
) -> bool:
    """Write ``resp`` (to a ``method`` request); True if the connection must close after it.

    ``close`` says the connection closes anyway; ``resp.file_fd`` is closed here.
    """
    if not all(safe_header_value(k) and safe_header_value(v) for k, v in resp.headers):
        # Operations refuse such values on the way in; this is the last
        # line: never let a stored or echoed value start a header of its own.
        log.error("a response header holds control characters; answering 500 instead")
        if resp.file_fd is not None:
            os.close(resp.file_fd)
        resp = Response(500, close=True)
    status = resp.status
    request_id = req.request_id if req is not None else os.urandom(12).hex()
    lines = [
        f"HTTP/1.1 {status} {_phrase(status)}",
        "Server: tencent-cos",
        f"Date: {http_now()}",
        f"x-cos-request-id: {request_id}",
    ]
    if req is not None and req.s3:
        lines.append(f"x-amz-request-id: {request_id}")
    length = resp.content_length if resp.content_length is not None else len(resp.body)
    no_body = status in (204, 304)
    if not no_body:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in resp.headers]
    close = close or resp.close
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
    send_body = method != "HEAD" and not no_body
    fd = resp.file_fd
    # Bodies are counted before they are sent: a client that has read the
    # whole answer must find it in the stats it asks for next.
    try:
        if fd is not None and send_body:
            stats.add_out(length)
            wfile.write(head)
            sent = _send_file(sock, fd, resp.file_offset, length)
            if sent != length:
                log.error("data file shorter than its index entry; closing the connection")
                close = True
                stats.add_out(sent - length)
        elif send_body and resp.body:
            stats.add_out(len(resp.body))
            wfile.write(head + resp.body)
        else:
            wfile.write(head)
    finally:
        if fd is not None:
            os.close(fd)
    return close


def _send_file(sock: socket.socket, fd: int, offset: int, length: int) -> int:
    """Send ``length`` bytes of ``fd`` from ``offset``; the bytes sent (fewer if it is short)."""
    if not isinstance(sock, ssl.SSLSocket):
        with open(fd, "rb", buffering=0, closefd=False) as f:
            return sock.sendfile(f, offset, length)
    buf = bytearray(min(TLS_SEND, length))
    view = memoryview(buf)
    sent = 0
    while sent < length:
        n = os.preadv(fd, [view[: min(len(buf), length - sent)]], offset + sent)
        if n == 0:
            break
        sock.sendall(view[:n])
        sent += n
    return sent
