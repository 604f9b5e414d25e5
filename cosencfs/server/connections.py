"""Connections of the local COS server: accepting them, a thread each, closing them at stop.

One thread per connection (``ThreadingHTTPServer``); the SDK keeps
connections alive, so the thread cost is paid once per pooled connection.
``get_request`` is the one place a connection is accepted: with TLS it is
wrapped there, and its handshake runs in the connection's own thread
(``handler.CosHandler.setup``), so a slow or hostile client never holds up
the accept loop.  What is read and written on a connection is
``cosencfs.server.handler``'s.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cosencfs.server.context import ServerContext

log = logging.getLogger(__name__)


class CosHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The default backlog of 5 drops SYNs when a client opens a pool at once.
    request_queue_size = 1024

    def __init__(
        self,
        address: tuple[str, int],
        ctx: ServerContext,
        handler: type[BaseHTTPRequestHandler],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.ctx = ctx
        self.tls = tls
        self._track_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._workers: set[threading.Thread] = set()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # Not HTTPServer.server_bind: it does a reverse DNS lookup (getfqdn).
        # SO_REUSEADDR lets a restarted server take the port of a stopped one.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept one connection: the one place a connection enters the server."""
        sock, address = self.socket.accept()
        if self.tls is None:
            return sock, address
        try:
            wrapped = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError:
            sock.close()
            raise
        return wrapped, address

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
