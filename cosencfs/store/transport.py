"""Every COS request: HTTP/1.1 by h11 over trio socket streams, TLS by ``tlsstream``.

One pool of keep-alive connections, used from the event loop: no thread
hand-off for small requests (two cost more than a HEAD or a 4 KiB GET); a
large body goes by one worker-thread job (``bodysend``, ``bodyrecv``).  h11
does all of HTTP/1.1; this module moves bytes, bounds the pool, times out and
replaces connections the server has closed.

- At most ``connections`` connections, one per request in flight (the
  ``limiter``); idle ones reused newest first, closed after ``MAX_IDLE`` or
  when the server closed them.
- A request on a reused connection that fails before any byte of an answer
  (the server closed it) is sent once more on a fresh connection;
  ``on_resend`` reports it (COS bills every attempt).
- Every connect, send and receive must progress within ``timeout`` seconds.
- https always verifies the server's certificate and name (``ca_file``, else
  the system's trust store); TLS is ``ssl`` over the trio socket
  (``tlsstream``: a new connection resumes an earlier session).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import ssl
import time
import urllib.request
from collections.abc import Callable
from typing import cast

import h11
import trio

from cosencfs.store.base import Body, FileRange
from cosencfs.store.bodies import read_small_body
from cosencfs.store.bodyrecv import DIRECT_BODY as DIRECT_BODY  # noqa: PLC0414 - tests use it here
from cosencfs.store.bodyrecv import headers_token, large_body_length, receive_off_loop
from cosencfs.store.bodysend import send_off_loop
from cosencfs.store.counters import RequestCounters
from cosencfs.store.tlsstream import ClientTls, TlsStream, client_tls_context
from cosencfs.store.wire import Answer, Endpoint, error_from
from cosencfs.util import acquire

log = logging.getLogger(__name__)

#: Idle connections older than this are closed rather than reused (COS and
#: most proxies drop idle connections after some tens of seconds).
MAX_IDLE = 15.0

#: Bodies (sent, or left to receive) of at least this many bytes move in one worker-thread
#: job; smaller in the loop (over https 256 KiB cost less there, 512 KiB more).
THREAD_BODY = 512 * 1024
_MAX_HEAD = 64 * 1024  # response heads larger than this are refused
_RECV = 256 * 1024


class TransportError(Exception):
    """No usable answer: connect failed, the connection broke, timed out, or HTTP was wrong."""


class CertificateError(TransportError):
    """The server's TLS certificate did not verify: refused, and not retried."""


class _Unanswered(Exception):
    """The request failed before any byte of an answer arrived."""

    def __init__(self, cause: TransportError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def warn_if_proxied(endpoint: Endpoint) -> None:
    """Say so when the environment names a proxy for the endpoint: none is used."""
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(endpoint.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(endpoint.host):
        log.warning(
            "%s_PROXY is set, but cosencfs connects to %s directly: "
            "proxies are not supported (docs/operations.md)",
            endpoint.scheme.upper(),
            endpoint.host,
        )


class _Conn:
    __slots__ = ("h11", "stream", "used")

    def __init__(self, stream: trio.SocketStream | TlsStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
        self.used = time.monotonic()

    def socket(self) -> trio.socket.SocketType:
        stream = self.stream
        if isinstance(stream, TlsStream):
            return stream.transport_stream.socket
        return stream.socket

    def closed_by_server(self) -> bool:
        """An idle connection with something to read: the server's FIN (or junk)."""
        poller = select.poll()
        poller.register(self.socket().fileno(), select.POLLIN)
        return bool(poller.poll(0))


class Transport:
    """Keep-alive connections to one endpoint, used from the trio thread."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        connections: int,
        timeout: float,
        ca_file: str | None = None,
        counters: RequestCounters | None = None,
    ) -> None:
        self._endpoint, self._timeout = endpoint, timeout
        self._counters = counters or RequestCounters()
        #: https: the context and the session new connections resume.
        tls = endpoint.scheme == "https"
        self.tls = ClientTls(client_tls_context(ca_file), endpoint.host) if tls else None
        #: One token per request in flight, hence per open connection.
        self.limiter = trio.CapacityLimiter(connections)
        #: Bodies sent by a thread job, their sends, bodies received so, their reads.
        self.body_jobs = self.body_sends = self.receive_jobs = self.receive_reads = 0
        self._idle: list[_Conn] = []
        #: Connections made, and open now (tests see the pool through these).
        self.opened = self.open_now = 0
        self._closed = False

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    async def request(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: Body | None = None,
        *,
        on_resend: Callable[[], None] = lambda: None,
        into: Callable[[int], memoryview] | None = None,
    ) -> Answer:
        """Send one request; a 3xx-5xx answer raises ``HttpStatusError``,
        no answer ``TransportError``.  ``into``: a large 2xx body is received
        into the buffer it gives (``_read_large_body``)."""
        if isinstance(body, FileRange) and body.length < THREAD_BODY:
            # A page-cache read of this size takes less than a thread hop.
            body = read_small_body(body)
        await acquire(self.limiter)
        try:
            for attempt in (1, 2):
                conn = self._reusable()
                reused = conn is not None
                if conn is None:
                    conn = await self._connect()
                try:
                    answer, keep = await self._exchange(conn, method, target, headers, body, into)
                except _Unanswered as exc:
                    self._discard(conn)
                    if not reused or attempt == 2:
                        raise exc.cause from None
                    log.debug("connection closed by the server; %s sent again", method)
                    on_resend()
                    continue
                except BaseException:
                    self._discard(conn)
                    raise
                if keep and not self._closed:
                    conn.used = time.monotonic()
                    if self.tls is not None:
                        self.tls.keep(cast(TlsStream, conn.stream))
                    self._idle.append(conn)
                else:
                    self._discard(conn)
                if answer.status >= 300:
                    raise error_from(answer)
                return answer
        finally:
            self.limiter.release()
        raise AssertionError("unreachable")

    def _reusable(self) -> _Conn | None:
        """The newest idle connection still open; closes the stale ones it passes."""
        now = time.monotonic()
        idle = self._idle
        # The oldest go first: they are the likeliest to be gone.
        while idle and now - idle[0].used > MAX_IDLE:
            self._discard(idle.pop(0))
        while idle:
            conn = idle.pop()
            if not conn.closed_by_server():
                return conn
            self._discard(conn)
        return None

    async def _connect(self) -> _Conn:
        ep = self._endpoint
        try:
            with trio.fail_after(self._timeout):
                tcp = await trio.open_tcp_stream(ep.host, ep.port)
                stream: trio.SocketStream | TlsStream = tcp
                if self.tls is not None:
                    try:
                        stream = await self.tls.connect(tcp)
                    except BaseException:
                        await trio.aclose_forcefully(tcp)
                        raise
        except trio.TooSlowError:
            raise TransportError(f"connect to {ep.host}:{ep.port}: timed out") from None
        except ssl.SSLCertVerificationError as exc:
            raise CertificateError(
                f"TLS certificate of {ep.host} does not verify: {exc.verify_message}"
            ) from None
        except ssl.SSLError as exc:
            raise TransportError(f"TLS handshake with {ep.host}: {exc}") from None
        except (OSError, trio.BrokenResourceError) as exc:
            raise TransportError(f"connect to {ep.host}:{ep.port}: {exc}") from None
        self.opened += 1
        self.open_now += 1
        resumed = isinstance(stream, TlsStream) and stream.session_reused
        self._counters.connected(tls=stream is not tcp, resumed=resumed)
        return _Conn(stream)

    def _discard(self, conn: _Conn) -> None:
        self.open_now -= 1
        _close_now(conn)

    async def _exchange(
        self,
        conn: _Conn,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: Body | None,
        into: Callable[[int], memoryview] | None,
    ) -> tuple[Answer, bool]:
        # One cancel scope for the whole exchange, its deadline pushed on at
        # every send and read ("each must progress within timeout"): a scope
        # per call cost more CPU than a small request's own send.
        sent = False
        with trio.CancelScope(deadline=trio.current_time() + self._timeout) as scope:
            try:
                await self._send_request(conn, scope, method, target, headers, body)
            except h11.LocalProtocolError as exc:
                raise TransportError(f"cannot send {method}: {exc}") from None
            except TransportError as exc:
                raise _Unanswered(exc) from None
            sent = True
            return await self._receive_answer(conn, scope, method, into)
        # Only reached when the deadline cancelled the exchange.
        if not sent:
            raise _Unanswered(TransportError("send timed out"))
        raise TransportError("no answer in time")

    async def _send_request(
        self,
        conn: _Conn,
        scope: trio.CancelScope,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: Body | None,
    ) -> None:
        h = conn.h11
        head = h.send(h11.Request(method=method, target=target, headers=headers)) or b""
        if body is None:
            await _send(conn, head + (h.send(h11.EndOfMessage()) or b""))
        elif not isinstance(body, FileRange) and len(body) < THREAD_BODY:
            # One write for head and body: one TLS record run, one syscall.
            data = head + (h.send(h11.Data(data=cast(bytes, body))) or b"")
            await _send(conn, data + (h.send(h11.EndOfMessage()) or b""))
        else:
            stream = conn.stream
            tls = stream if isinstance(stream, TlsStream) else None
            self.body_jobs += 1
            # The thread times out every send that makes no progress itself;
            # the exchange's deadline would cut a long body that progresses.
            scope.deadline = math.inf
            try:
                sends = await send_off_loop(conn.socket(), h, tls, head, body, self._timeout)
            except TimeoutError:
                raise TransportError("send timed out") from None
            except OSError as exc:
                raise TransportError(f"send failed: {exc}") from None
            self.body_sends += sends
            scope.deadline = trio.current_time() + self._timeout

    async def _receive_answer(
        self,
        conn: _Conn,
        scope: trio.CancelScope,
        method: str,
        into: Callable[[int], memoryview] | None,
    ) -> tuple[Answer, bool]:
        h = conn.h11
        got = False
        status = 0
        headers: dict[str, str] = {}
        parts: list[bytes] = []
        timeout = self._timeout
        try:
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    if got:
                        scope.deadline = trio.current_time() + timeout
                    data = await _receive(conn)
                    if not data and not got:
                        raise _Unanswered(TransportError("connection closed before an answer"))
                    got = True
                    h.receive_data(data)
                elif isinstance(event, h11.Data):
                    parts.append(event.data)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    for name, value in event.headers:
                        # Latin-1 keeps every byte; metadata is UTF-8 inside it.
                        headers[name.decode("latin-1")] = value.decode("latin-1")
                    length = large_body_length(method, status, headers)
                    if length is not None:
                        # An error's body (XML) is never the caller's data.
                        give = into if status < 300 else None
                        body, keep = await self._read_large_body(conn, event, length, scope, give)
                        return Answer(status, headers, body), keep
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif not isinstance(event, h11.InformationalResponse):
                    raise TransportError(f"unexpected {type(event).__name__}")
        except h11.RemoteProtocolError as exc:
            raise TransportError(f"bad answer: {exc}") from None
        keep = h.our_state is h11.DONE and h.their_state is h11.DONE
        if keep:
            h.start_next_cycle()
        return Answer(status, headers, b"".join(parts)), keep

    async def _read_large_body(
        self,
        conn: _Conn,
        response: h11.Response,
        length: int,
        scope: trio.CancelScope,
        into: Callable[[int], memoryview] | None = None,
    ) -> tuple[bytes, bool]:
        """A large Content-Length body read straight into one buffer.

        Through h11 every received piece is copied four times (its buffer, two
        slices, the final join): for an 8 MiB GET that was most of the loop's
        CPU.  h11 has read the head and knows what follows; the body is exactly
        ``length`` bytes, read into place: over https by a thread job
        (``bodyrecv``) when at least ``THREAD_BODY`` bytes are to come, else
        in the loop (``recv_into``, or ``SSLObject.read`` into the buffer).  A connection
        kept alive gets a fresh h11 state for its next request.  ``into``
        gives the buffer (a reused one: no fresh 8 MiB zeroed and faulted in
        per GET); else a new ``bytearray``.
        """
        leftover, _ = conn.h11.trailing_data
        if into is not None:
            view = into(length)[:length]
            if len(view) != length:
                raise TransportError(f"a {len(view)} byte buffer for a {length} byte body")
            buf: bytearray | memoryview = view
        else:
            buf = bytearray(length)
            view = memoryview(buf)
        pos = min(len(leftover), length)
        view[:pos] = leftover[:pos]
        stream = conn.stream
        # https only: over http a job saved the loop less CPU than it added.
        if isinstance(stream, TlsStream) and length - pos >= THREAD_BODY:
            self.receive_jobs += 1
            scope.deadline = math.inf  # the thread times out a read that gets nothing
            try:
                got, reads = await receive_off_loop(
                    conn.socket(), stream, view[pos:], self._timeout
                )
            except TimeoutError:
                raise TransportError("no answer in time") from None
            except OSError as exc:
                raise TransportError(f"receive failed: {exc}") from None
            self.receive_reads += reads
            pos += got
        while pos < length:
            scope.deadline = trio.current_time() + self._timeout
            try:
                n = await _receive_into(conn, view[pos:])
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise TransportError(f"receive failed: {exc}") from None
            if n == 0:
                raise TransportError(f"bad answer: body ended at {pos} of {length} bytes")
            pos += n
        connection = headers_token(response, b"connection")
        keep = response.http_version == b"1.1" and b"close" not in connection
        keep = keep and len(leftover) <= length
        if keep:
            conn.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
        # Not copied into bytes: callers only read it (slices, writes, decryption).
        return cast(bytes, buf), keep

    def close(self) -> None:
        """Close the idle connections; those in use close when their request ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self.open_now -= 1
            _close_now(conn)


async def _receive_into(conn: _Conn, view: memoryview) -> int:
    stream = conn.stream
    if isinstance(stream, TlsStream):
        return await stream.receive_into(view)
    return int(await stream.socket.recv_into(view))


async def _send(conn: _Conn, data: bytes | bytearray | memoryview) -> None:
    stream = conn.stream
    try:
        if isinstance(stream, trio.SocketStream):
            # Written at once if it fits the socket's buffer (send_all yields even then).
            with contextlib.suppress(BlockingIOError):
                data = memoryview(data)[os.write(stream.socket.fileno(), data) :]
            if not data:
                return
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise TransportError(f"send failed: {exc}") from None


async def _receive(conn: _Conn) -> bytes:
    try:
        return await conn.stream.receive_some(_RECV)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise TransportError(f"receive failed: {exc}") from None


def _close_now(conn: _Conn) -> None:
    # No TLS close_notify nor aclose (a running loop, a round trip): the server sees a FIN.
    sock = conn.socket()
    if sock.fileno() >= 0:
        os.close(sock.detach())
