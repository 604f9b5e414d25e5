"""Large request bodies sent by one worker-thread job, off the event loop.

In the loop, an 8 MiB PUT was TLS-encrypted on the loop's thread and went
out in many partial sends, each a trip through trio's scheduler: 9-10 ms of
the loop's CPU over https, during which it served nothing else.  Here (about
1 ms of the loop's CPU; the encryption costs the same, in another thread;
docs/performance.md, "Large bodies off the loop") the request head and the whole
body go out in one ``trio.to_thread`` job: blocking-style sends (poll the
socket for writability, then send as much as it takes), TLS encryption
with the connection's ``ssl.SSLObject`` (which releases the GIL), cache-file
ranges read in the same thread (and over plain http handed to the kernel
by ``os.sendfile``, never copied through Python).

Who owns the connection while the job runs: the request's task, which holds
its ``Transport.limiter`` token and awaits the job.  It touches neither the
socket, the h11 state nor the TLS object until the job returns.  Cancelled,
it abandons the job, shuts the socket down (the thread's next send fails at
once) and discards the connection: it is never used again, so a body half
written never reaches a later request.  The thread sends on a duplicate of
the socket's descriptor, so the loop closing its own cannot make the thread
write to whatever file reuses that number.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, cast

import h11
import trio

from cosencfs.store.base import Body, FileRange

#: Plaintext read, encrypted and sent per step (memory stays bounded by the
#: requests in flight; each step's sends must progress within the timeout).
STEP = 256 * 1024

#: Thread jobs that send bodies, at most (a job holds no more than a step).
SENDERS = trio.CapacityLimiter(16)


class Encrypting(Protocol):
    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes: ...


@dataclass(slots=True)
class _Span:
    """A cache-file range that h11 frames but never reads (``os.sendfile`` sends it)."""

    length: int

    def __len__(self) -> int:
        return self.length


class ShortFile(OSError):
    """The cache file is shorter than the body it should hold."""


class DupFd:
    """A duplicate of a socket's descriptor for one thread job, closed exactly
    once: by the job when it ran, else by the loop when the job was cancelled
    before its thread started (cancellation can come while it waits for a
    limiter token)."""

    __slots__ = ("_lock", "_state", "fd")

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.fd = os.dup(sock.fileno())
        self._lock = threading.Lock()
        self._state = "new"

    def start(self) -> bool:
        """In the thread: whether to run (then the job closes ``fd``)."""
        with self._lock:
            if self._state == "abandoned":
                return False
            self._state = "running"
            return True

    def abandon(self) -> None:
        """In the loop, on cancellation: closes ``fd`` if no thread has it."""
        with self._lock:
            if self._state == "new":
                os.close(self.fd)
                self._state = "abandoned"


async def send_off_loop(
    sock: trio.socket.SocketType,
    h: h11.Connection,
    tls: Encrypting | None,
    head: bytes,
    body: Body,
    stall: float,
) -> int:
    """Send ``head`` and ``body`` and end the message; the number of send calls.

    Raises ``OSError`` (``TimeoutError`` when a send made no progress within
    ``stall`` seconds) or ``h11.LocalProtocolError``; cancelled, the socket is shut down.
    """
    dup = DupFd(sock)
    job = _Job(dup, h, tls, stall)
    try:
        return await trio.to_thread.run_sync(
            job.run, head, body, limiter=SENDERS, abandon_on_cancel=True
        )
    except trio.Cancelled:
        # The thread may still be sending: make its next send fail.  The
        # connection is discarded by the caller and never used again.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        dup.abandon()
        raise


class _Job:
    """One body's sending, run in a worker thread (see the module's docstring
    for why it needs no lock: the awaiting task owns the connection)."""

    __slots__ = ("dup", "fd", "h", "sends", "timeout", "tls")

    def __init__(
        self, dup: DupFd, h: h11.Connection, tls: Encrypting | None, timeout: float
    ) -> None:
        self.dup = dup
        self.fd = dup.fd  # closed by run(), if it runs
        self.h = h
        self.tls = tls
        self.timeout = timeout
        self.sends = 0

    def run(self, head: bytes, body: Body) -> int:
        # Runs in a worker thread; holds no lock (the module's docstring).
        if not self.dup.start():
            raise OSError("cancelled before it started")
        try:
            if self.tls is None:
                self._plain(head, body)
            else:
                self._encrypted(self.tls, head, body)
            return self.sends
        finally:
            os.close(self.fd)

    def _plain(self, head: bytes, body: Body) -> None:
        if not isinstance(body, FileRange):
            self._send_parts([head, *self._frame(body), self.h.send(h11.EndOfMessage()) or b""])
            return
        span = _Span(body.length)
        parts: list[bytes | _Span] = [head, *self._frame(cast(bytes, span))]
        parts.append(self.h.send(h11.EndOfMessage()) or b"")
        src = os.open(body.path, os.O_RDONLY)
        try:
            pending: list[bytes] = []
            for part in parts:
                if part is span:
                    self._send_parts(pending)
                    pending = []
                    self._sendfile(src, body.offset, body.length)
                else:
                    pending.append(cast(bytes, part))
            self._send_parts(pending)
        finally:
            os.close(src)

    def _encrypted(self, tls: Encrypting, head: bytes, body: Body) -> None:
        # The head goes out with the first step's records, in one writev.
        pending = [tls.encrypt(head)]
        for piece in _steps(body):
            pending += [tls.encrypt(part) for part in self._frame(piece)]
            self._send_parts(pending)
            pending = []
        end = self.h.send(h11.EndOfMessage())
        self._send_parts([*pending, tls.encrypt(end)] if end else pending)

    def _frame(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        # h11 counts the bytes against Content-Length (or frames a chunk) and
        # passes the data itself through: not copied.
        return cast(
            list[bytes], self.h.send_with_data_passthrough(h11.Data(data=cast(bytes, data)))
        )

    def _send_parts(self, parts: list[bytes]) -> None:
        views = [memoryview(p).cast("B") for p in parts if len(p)]
        while views:
            try:
                n = os.writev(self.fd, views)
            except BlockingIOError:
                self._writable()
                continue
            self.sends += 1
            while n:
                first = views[0]
                if n >= len(first):
                    n -= len(first)
                    views.pop(0)
                else:
                    views[0] = first[n:]
                    n = 0

    def _sendfile(self, src: int, offset: int, length: int) -> None:
        end = offset + length
        while offset < end:
            try:
                n = os.sendfile(self.fd, src, offset, end - offset)
            except BlockingIOError:
                self._writable()
                continue
            self.sends += 1
            if n == 0:
                raise ShortFile(f"cache file shorter than the upload (ends at {offset})")
            offset += n

    def _writable(self) -> None:
        wait_for(self.fd, select.POLLOUT, self.timeout)


def wait_for(fd: int, event: int, stall: float) -> None:
    """Block until ``fd`` is ready for ``event`` (``TimeoutError`` after ``stall`` seconds)."""
    poller = select.poll()
    poller.register(fd, event)
    if not poller.poll(stall * 1000):
        raise TimeoutError("send timed out" if event == select.POLLOUT else "receive timed out")


def send_all(fd: int, data: bytes, stall: float) -> int:
    """Write all of ``data`` to the non-blocking ``fd``; the number of writes."""
    view = memoryview(data)
    writes = 0
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            wait_for(fd, select.POLLOUT, stall)
            continue
        writes += 1
        view = view[n:]
    return writes


def _steps(body: Body) -> Iterator[memoryview]:
    """The body in steps of at most ``STEP`` bytes; a file range read into one
    reused buffer (each step is encrypted, i.e. copied, before the next read)."""
    if not isinstance(body, FileRange):
        view = memoryview(body).cast("B")
        for at in range(0, len(view), STEP):
            yield view[at : at + STEP]
        return
    buf = memoryview(bytearray(min(STEP, body.length)))
    fd = os.open(body.path, os.O_RDONLY)
    try:
        end = body.offset + body.length
        for at in range(body.offset, end, STEP):
            want = min(STEP, end - at)
            got = os.preadv(fd, [buf[:want]], at)
            if got != want:
                raise ShortFile(f"cache file shorter than the upload ({got} < {want} at {at})")
            yield buf[:want]
    finally:
        os.close(fd)
