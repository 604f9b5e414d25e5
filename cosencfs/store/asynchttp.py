"""Small requests in the event loop: HTTP/1.1 over trio sockets.

A request made in a worker thread costs two trio/thread hand-offs, and up to
``concurrency`` threads then contend for the GIL.  For a HEAD, a 4 KiB GET or
a 4 KiB PUT that overhead is larger than the request itself: in a profile of
a cold ``ls -l`` (1000 HEADs) the hand-offs were 42 % of the daemon's CPU.
Requests whose bodies are small therefore run here, in the trio thread, on a
pool of keep-alive connections; bodies of megabytes stay on the threaded
``FastTransport``, which also signs the requests of both (the SDK's
signature, byte for byte).

Plain ``http://`` endpoints only (the local server, or COS addressed over
HTTP); an ``https://`` endpoint uses the threaded path for everything.
"""

from __future__ import annotations

import http.client
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import trio

from cosencfs.store.fasthttp import STALE_AFTER, Answer, FastTransport, error_from

log = logging.getLogger(__name__)

#: Bodies up to this size (sent or expected) go through the event loop.
SMALL_BODY = 1 << 20

#: Idle connections older than this are closed rather than reused.
MAX_IDLE = 8.0

_MAX_HEAD = 64 * 1024
_RECV = 256 * 1024


class _Conn:
    __slots__ = ("buf", "stream", "used")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.used = time.monotonic()

    async def fill(self) -> bool:
        """Receive more bytes into the buffer; False at end of stream."""
        data = await self.stream.receive_some(_RECV)
        if not data:
            return False
        self.buf += data
        return True

    async def take(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self.fill():
                raise http.client.IncompleteRead(bytes(self.buf), n - len(self.buf))
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                data = bytes(self.buf[:end])
                del self.buf[: end + 2]
                return data
            if len(self.buf) > _MAX_HEAD:
                raise http.client.LineTooLong("header line")
            if not await self.fill():
                raise http.client.IncompleteRead(bytes(self.buf))


class AsyncTransport:
    """Keep-alive HTTP/1.1 connections to one endpoint, used from the trio thread."""

    def __init__(self, signer: FastTransport, connections: int, timeout: float) -> None:
        if signer.scheme != "http":
            raise ValueError("the event-loop transport speaks plain HTTP only")
        url = urlsplit(f"http://{signer.netloc}")
        self._signer = signer
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or 80
        self._timeout = timeout
        self._idle: list[_Conn] = []
        #: Bounds the connections open at once, like the threads' pool.
        self.limiter = trio.CapacityLimiter(connections)
        self._closed = False
        self._run: trio.lowlevel.Task | None = None

    async def request(
        self,
        method: str,
        key: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        body: bytes | bytearray | memoryview | None = None,
        on_resend: Callable[[], None] = lambda: None,
    ) -> Answer:
        """One request; errors as ``FastTransport.request`` raises them."""
        path, wire = self._signer.prepare(
            method, key, headers, params, len(body) if body is not None else 0
        )
        head = [f"{method} {path} HTTP/1.1"]
        head += [f"{k}: {v}" for k, v in wire.items()]
        raw = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if body:
            raw += bytes(body)
        async with self.limiter:
            for attempt in (1, 2):
                conn, reused = await self._connection()
                stale = reused and time.monotonic() - conn.used > STALE_AFTER
                try:
                    with trio.fail_after(self._timeout):
                        answer, keep = await self._exchange(conn, method, raw)
                except _Unanswered as exc:
                    await _discard(conn)
                    # A kept-alive connection the server has closed meanwhile:
                    # one fresh try (every attempt is billed: on_resend).
                    if not stale or attempt == 2:
                        raise exc.cause from None
                    log.debug("resending %s on a fresh connection", method)
                    on_resend()
                    continue
                except trio.TooSlowError:
                    await _discard(conn)
                    raise TimeoutError(f"no answer within {self._timeout:.0f} s") from None
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    await _discard(conn)
                    raise ConnectionResetError(str(exc) or type(exc).__name__) from None
                except BaseException:
                    await _discard(conn)
                    raise
                conn.used = time.monotonic()
                if keep and not self._closed:
                    self._idle.append(conn)
                else:
                    await _discard(conn)
                if answer.status >= 300:
                    raise error_from(answer)
                return answer
        raise AssertionError("unreachable")

    async def _connection(self) -> tuple[_Conn, bool]:
        run = trio.lowlevel.current_root_task()
        if run is not self._run:
            # Connections of an earlier trio.run (a store reused by a command).
            self.close()
            self._closed = False
            self._run = run
        while self._idle:
            conn = self._idle.pop()  # the most recently used: least likely stale
            if time.monotonic() - conn.used < MAX_IDLE:
                return conn, True
            await _discard(conn)
        try:
            with trio.fail_after(self._timeout):
                stream = await trio.open_tcp_stream(self._host, self._port)
        except trio.TooSlowError:
            raise TimeoutError("connecting timed out") from None
        except OSError as exc:
            raise ConnectionRefusedError(f"cannot connect: {exc}") from None
        return _Conn(stream), False

    async def _exchange(self, conn: _Conn, method: str, raw: bytes) -> tuple[Answer, bool]:
        try:
            await conn.stream.send_all(raw)
            status_line = await conn.line()
        except (OSError, trio.BrokenResourceError, http.client.HTTPException) as exc:
            cause = exc if isinstance(exc, ConnectionError) else None
            raise _Unanswered(cause or http.client.RemoteDisconnected(str(exc))) from None
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise http.client.BadStatusLine(status_line.decode("latin-1"))
        status = int(parts[1])
        headers: dict[str, str] = {}
        while True:
            line = await conn.line()
            if not line:
                break
            name, sep, value = line.partition(b":")
            if not sep:
                raise http.client.HTTPException(f"malformed header line {line[:40]!r}")
            headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
        keep = parts[0] == b"HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await _chunked(conn)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise http.client.HTTPException("bad Content-Length") from None
            body = await conn.take(length)
        else:
            while await conn.fill():
                pass
            body, keep = bytes(conn.buf), False
        return Answer(status, headers, body), keep

    def close(self) -> None:
        """Close the idle connections; connections in use close when their request ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            # trio's own close() needs a running loop; this may be called after.
            os.close(conn.stream.socket.detach())


class _Unanswered(Exception):
    """The request failed before any byte of an answer arrived."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def _chunked(conn: _Conn) -> bytes:
    out = bytearray()
    while True:
        size_line = await conn.line()
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise http.client.HTTPException("bad chunk size") from None
        if size == 0:
            while await conn.line():  # trailers
                pass
            return bytes(out)
        out += await conn.take(size)
        await conn.take(2)


async def _discard(conn: _Conn) -> None:
    await trio.aclose_forcefully(conn.stream)
