"""HTTP plumbing of the local COS server: the threaded server and the request handler.

One thread per connection (``ThreadingHTTPServer``); the SDK keeps
connections alive, so the thread cost is paid once per pooled connection.
Fast paths avoid per-request work: responses are written with one
``sendall`` for headers and small bodies, object bodies go out with
``sendfile`` from the data file, request bodies are read with ``readinto``
into a per-connection 1 MiB buffer.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cosencfs.server import admin, multipart, objects, xmlio
from cosencfs.server.auth import authenticate
from cosencfs.server.bodies import BodyReader, ChunkedBody, ClientGone, LengthBody, RawStream, drain
from cosencfs.server.context import ServerContext, safe_header_value
from cosencfs.server.errors import CosError
from cosencfs.server.faults import FaultKind
from cosencfs.server.routing import (
    Op,
    Request,
    Response,
    address,
    classify,
    parse_query,
    split_target,
)

log = logging.getLogger(__name__)

BUFFER_SIZE = 1024 * 1024
_KNOWN_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE"})

Operation = Callable[[ServerContext, Request, BodyReader, memoryview], Response]
OPERATIONS: dict[Op, Operation] = {
    Op.GET_OBJECT: objects.get_object,
    Op.HEAD_OBJECT: objects.get_object,
    Op.PUT_OBJECT: objects.put_object,
    Op.COPY_OBJECT: objects.copy_object,
    Op.DELETE_OBJECT: objects.delete_object,
    Op.DELETE_MULTIPLE_OBJECTS: objects.delete_multiple,
    Op.LIST_OBJECTS: objects.list_objects,
    Op.LIST_OBJECTS_V2: objects.list_objects_v2,
    Op.PUT_BUCKET: objects.put_bucket,
    Op.HEAD_BUCKET: objects.head_bucket,
    Op.DELETE_BUCKET: objects.delete_bucket,
    Op.GET_BUCKET_LOCATION: objects.get_bucket_location,
    Op.LIST_BUCKETS: objects.list_buckets,
    Op.GET_BUCKET_VERSIONING: objects.get_bucket_versioning,
    Op.INITIATE_MULTIPART_UPLOAD: multipart.initiate,
    Op.UPLOAD_PART: multipart.upload_part,
    Op.UPLOAD_PART_COPY: multipart.upload_part_copy,
    Op.LIST_PARTS: multipart.list_parts,
    Op.COMPLETE_MULTIPART_UPLOAD: multipart.complete,
    Op.ABORT_MULTIPART_UPLOAD: multipart.abort,
    Op.LIST_MULTIPART_UPLOADS: multipart.list_uploads,
}

_date_cache: tuple[int, str] = (0, "")


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


class Counted:
    """Counts the body bytes a request delivered (for the stats endpoint)."""

    __slots__ = ("count", "inner")

    def __init__(self, inner: BodyReader) -> None:
        self.inner = inner
        self.count = 0

    @property
    def exhausted(self) -> bool:
        return self.inner.exhausted

    def readinto(self, buf: memoryview) -> int:
        n = self.inner.readinto(buf)
        self.count += n
        return n

    def readline(self, limit: int) -> bytes:
        line = self.inner.readline(limit)
        self.count += len(line)
        return line


class CosHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The default backlog of 5 drops SYNs when a client opens a pool at once.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], ctx: ServerContext) -> None:
        self.ctx = ctx
        self._track_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._workers: set[threading.Thread] = set()
        super().__init__(address, CosHandler)

    def server_bind(self) -> None:
        # Not HTTPServer.server_bind: it does a reverse DNS lookup (getfqdn).
        # SO_REUSEADDR lets a restarted server take the port of a stopped one.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        worker = threading.Thread(
            target=self._work, args=(request, client_address), name="cos-conn", daemon=True
        )
        with self._track_lock:
            self._workers.add(worker)
        worker.start()

    def _work(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._track_lock:
                self._workers.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver calls this from inside its except clause.
        log.exception("unexpected error serving %s", client_address)  # noqa: LOG004

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._track_lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def close_connections(self) -> None:
        with self._track_lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def join_workers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._track_lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                log.warning("a connection thread did not stop within %.0f s", timeout)


class CosHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Not HTTP/0.9: errors about malformed request lines get a status line too.
    default_request_version = "HTTP/1.0"
    server_version = "tencent-cos"
    disable_nagle_algorithm = True
    #: Idle keep-alive connections and stalled bodies are dropped after this.
    timeout = 300.0
    server: CosHTTPServer

    def setup(self) -> None:
        super().setup()
        self.ctx = self.server.ctx
        self._buffer: memoryview | None = None
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.track(self.connection, False)

    @property
    def buf(self) -> memoryview:
        if self._buffer is None:
            self._buffer = memoryview(bytearray(BUFFER_SIZE))
        return self._buffer

    def log_message(self, format: str, *args: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", self.address_string(), format % args)

    def handle_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            self._serve()
        except (ClientGone, OSError) as exc:
            # Timeouts, resets, a client giving up mid-body: drop the connection.
            log.debug("connection dropped: %r", exc)
            self.close_connection = True

    # ---------------------------------------------------------------- dispatch

    def _serve(self) -> None:
        ctx = self.ctx
        words = self.requestline.split()
        # Not self.path: http.server collapses a leading '//', which is part of a key.
        path, query_string = split_target(words[1] if len(words) > 1 else "/")
        if path in admin.ADMIN_PATHS:
            self._admin(path, query_string)
            return
        method = self.command
        host = str(self.headers.get("Host", ""))
        query_list = parse_query(query_string)
        query = dict(query_list)
        authorization = str(self.headers.get("Authorization", ""))
        req = Request(
            method=method,
            host=host,
            raw_path=path,
            query_list=query_list,
            headers=self.headers,
            bucket=None,
            key=None,
            s3=False,
            op=Op.UNSUPPORTED,
            request_id=os.urandom(12).hex(),
            query=query,
        )
        bad_address: CosError | None = None
        try:
            req.bucket, req.key, path_style = address(host, path)
        except CosError as exc:
            bad_address, path_style = exc, True
        else:
            req.op = classify(method, req.bucket, req.key, query, self.headers)
        req.s3 = (
            path_style
            or authorization.startswith("AWS")
            or "X-Amz-Algorithm" in query
            or any(k.lower().startswith("x-amz-meta-") for k in self.headers)
        )
        ctx.stats.count(req.op.value)
        try:
            body = self._body()
        except CosError as exc:
            # Without a usable body length the connection cannot be reused.
            self._send(req, self._error(req, exc), close=True)
            return
        if bad_address is not None:
            close = self._drain(body)
            self._send(req, self._error(req, bad_address), close=close)
            return
        latency = ctx.faults.latency_ms
        if latency:
            ctx.stopping.wait(latency / 1000)
        fault = ctx.faults.pick(req.op is Op.COPY_OBJECT)
        if fault is not None:
            self._inject(req, body, fault)
            return
        try:
            authenticate(
                ctx.credentials,
                ctx.allow_unsigned_s3,
                authorization=authorization,
                method=method,
                raw_path=path,
                query=query_list,
                headers=self.headers.items(),
            )
            operation = OPERATIONS.get(req.op)
            if operation is None:
                raise CosError("NotImplemented" if method in _KNOWN_METHODS else "MethodNotAllowed")
            response = operation(ctx, req, body, self.buf)
        except CosError as exc:
            log.debug("%s %s -> %s", method, path, exc.code)
            response = self._error(req, exc)
        except (ClientGone, ConnectionError, TimeoutError):
            raise
        except Exception:
            log.exception("internal error in %s %s", req.op, path)
            response = self._error(req, CosError("InternalError"))
        close = self._drain(body)
        ctx.stats.add_in(body.count)
        self._send(req, response, close=close)

    def _body(self) -> Counted:
        """The request body reader, by Transfer-Encoding / Content-Length / aws-chunked."""
        headers = self.headers
        reader: BodyReader
        if "chunked" in str(headers.get("Transfer-Encoding", "")).lower():
            reader = ChunkedBody(RawStream(self.rfile))
        else:
            raw = str(headers.get("Content-Length", "") or "0").strip()
            if not raw.isdigit():
                raise CosError("InvalidArgument", "Content-Length is not a number.")
            reader = LengthBody(self.rfile, int(raw))
        if str(headers.get("x-amz-content-sha256", "")).startswith("STREAMING-"):
            reader = ChunkedBody(reader)
        return Counted(reader)

    def _drain(self, body: Counted) -> bool:
        """Consume what the operation left of the body; True if the connection must close."""
        if body.exhausted:
            return False
        try:
            drain(body, self.buf)
        except CosError:
            return True
        return False

    # ---------------------------------------------------------------- faults, admin

    def _inject(self, req: Request, body: Counted, fault: FaultKind) -> None:
        # Read the whole request first, so the failure is not mistaken for a
        # half-sent body, then fail without touching any stored data.
        close = self._drain(body)
        self.ctx.stats.add_in(body.count)
        log.debug("injecting %s into %s", fault.value, req.op)
        if fault is FaultKind.RESET:
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # The fd closes (with RST) only once the makefile() objects are gone too.
            self.rfile.close()
            self.wfile.close()
            self.connection.close()
            return
        if fault is FaultKind.ERROR_200:
            xml = xmlio.error_body(
                "InternalError",
                "Injected fault.",
                req.resource,
                req.request_id,
                os.urandom(8).hex(),
            )
            self._send(req, Response(200, [objects.XML], xml), close=close)
            return
        code = "InternalError" if fault is FaultKind.INTERNAL_ERROR else "SlowDown"
        self._send(req, self._error(req, CosError(code, "Injected fault.")), close=close)

    def _admin(self, path: str, query_string: str) -> None:
        try:
            close = self._drain(self._body())
        except CosError:
            close = True
        status, headers, body = admin.handle(
            self.ctx,
            method=self.command,
            path=path,
            query_string=query_string,
            headers=self.headers.items(),
            authorization=str(self.headers.get("Authorization", "")),
        )
        if status in (401, 403):
            log.warning("admin request %s %s refused", self.command, path)
        self._send(None, Response(status, headers, body), close=close)

    # ---------------------------------------------------------------- responses

    def _error(self, req: Request, exc: CosError) -> Response:
        headers = [*exc.headers]
        if self.command == "HEAD":
            # No body on HEAD; the SDK reads the code from this header instead.
            headers.append(("x-cos-error-code", exc.code))
            return Response(exc.status, headers, content_length=0)
        xml = xmlio.error_body(
            exc.code, exc.message, req.resource, req.request_id, os.urandom(8).hex()
        )
        return Response(exc.status, [("Content-Type", "application/xml"), *headers], xml)

    def _send(self, req: Request | None, resp: Response, *, close: bool = False) -> None:
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
        if close or resp.close or self.close_connection:
            self.close_connection = True
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
        send_body = self.command != "HEAD" and not no_body
        fd = resp.file_fd
        # Bodies are counted before they are sent: a client that has read the
        # whole answer must find it in the stats it asks for next.
        try:
            if fd is not None and send_body:
                self.ctx.stats.add_out(length)
                self.wfile.write(head)
                with open(fd, "rb", buffering=0, closefd=False) as f:
                    sent = self.connection.sendfile(f, resp.file_offset, length)
                if sent != length:
                    log.error("data file shorter than its index entry; closing the connection")
                    self.close_connection = True
                    self.ctx.stats.add_out(sent - length)
            elif send_body and resp.body:
                self.ctx.stats.add_out(len(resp.body))
                self.wfile.write(head + resp.body)
            else:
                self.wfile.write(head)
        finally:
            if fd is not None:
                os.close(fd)
