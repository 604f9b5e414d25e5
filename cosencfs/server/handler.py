"""One connection's requests: read each request line, hand it on, write the answer.

``CosHandler`` is ``http.server``'s handler, one per connection and thread:
it parses the request line and headers, builds the request (``routing``)
and its body reader (``bodies``), lets ``dispatch`` serve it and writes the
answer (``responses``).  Request bodies are read with ``readinto`` into a
per-connection 1 MiB buffer.  A TLS connection shakes hands here, in its own
thread; the latency model (``latency``) charges the connection's set-up on
its first COS request, one round trip per request and one per
``100 Continue``.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from cosencfs.server import admin, dispatch
from cosencfs.server.bodies import ClientGone, finish, request_body
from cosencfs.server.connections import CosHTTPServer
from cosencfs.server.errors import CosError
from cosencfs.server.latency import ConnectionCharges, RoundTrip, handshake_round_trips
from cosencfs.server.responses import error_response, send_response
from cosencfs.server.routing import Request, Response, request_from, split_target

log = logging.getLogger(__name__)

BUFFER_SIZE = 1024 * 1024


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
        self.ctx = self.server.ctx
        self._buffer: memoryview | None = None
        #: The TLS handshake failed: nothing is read or answered on this connection.
        self._dead = False
        self.charges = ConnectionCharges(self.ctx.rtt)
        # Tracked before the handshake, so stop() can cut a stalled one short.
        self.server.track(self.request, True)
        if isinstance(self.request, ssl.SSLSocket):
            self._handshake(self.request)
        super().setup()

    def _handshake(self, sock: ssl.SSLSocket) -> None:
        self.charges.tls = True
        sock.settimeout(self.timeout)
        try:
            sock.do_handshake()
        except OSError as exc:  # ssl.SSLError too: plain HTTP, an untrusted certificate
            log.debug("TLS handshake with %s failed: %r", self.client_address, exc)
            self.ctx.stats.add_tls_failure()
            self._dead = True
            return
        self.charges.handshake_rtts = handshake_round_trips(sock)

    def handle(self) -> None:
        if not self._dead:
            super().handle()

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            if not self._dead:
                self.charges.closed()
            self.server.track(self.request, False)

    def _target(self) -> tuple[str, str]:
        words = self.requestline.split()
        # Not self.path: http.server collapses a leading '//', which is part of a key.
        return split_target(words[1] if len(words) > 1 else "/")

    def handle_expect_100(self) -> bool:
        # The client waits one round trip for "100 Continue" before sending its body.
        if self._target()[0] not in admin.ADMIN_PATHS:
            self.charges.first_request(admin=False)
            self.ctx.rtt.charge(RoundTrip.CONTINUE)
        return super().handle_expect_100()

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

    def _serve(self) -> None:
        ctx = self.ctx
        path, query_string = self._target()
        if path in admin.ADMIN_PATHS:
            self.charges.first_request(admin=True)
            self._admin(path, query_string)
            return
        self.charges.first_request(admin=False)
        req, bad_address = request_from(self.command, path, query_string, self.headers)
        ctx.stats.count(req.op.value)
        ctx.rtt.charge(RoundTrip.REQUEST)
        try:
            body = request_body(self.headers, self.rfile)
        except CosError as exc:
            # Without a usable body length the connection cannot be reused.
            self._send(req, error_response(req, exc), close=True)
            return
        response = dispatch.serve(ctx, req, body, self.buf, bad_address)
        if response.reset:
            self._reset()
            return
        self._send(req, response)

    def _admin(self, path: str, query_string: str) -> None:
        try:
            close = finish(request_body(self.headers, self.rfile), self.buf)
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

    def _reset(self) -> None:
        """Close the connection with RST and no answer."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The fd closes (with RST) only once the makefile() objects are gone too.
        self.rfile.close()
        self.wfile.close()
        self.connection.close()

    def _send(self, req: Request | None, resp: Response, *, close: bool = False) -> None:
        self.close_connection = send_response(
            self.wfile,
            self.connection,
            self.ctx.stats,
            self.command,
            req,
            resp,
            close=close or self.close_connection,
        )
