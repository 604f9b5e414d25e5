"""Large answer bodies: which are received in place, and over https by one worker-thread job.

Which bodies skip h11's buffer (``large_body_length``: framed by
Content-Length alone, at least ``DIRECT_BODY``) and are read straight into
one buffer, the caller's when it gives one (``ObjectStore.get_into``).

The twin of ``bodysend`` for GETs: an 8 MiB body over https was decrypted on
the loop's thread, one trip through trio's scheduler per socket read.  Here
the thread reads the socket (poll for readability, then ``readv`` as much as
there is, into one reused buffer) and decrypts with the connection's
``ssl.SSLObject`` (which releases the GIL) straight into the answer's buffer.
Plain http stays in the loop: measured, a thread job cost more CPU in all
than the loop's ``recv_into`` (performance.md, branch tlsput).

Who owns the connection while the job runs, and what cancellation does:
as in ``bodysend`` (the awaiting task owns it; cancelled, it shuts the
socket down and discards the connection; the thread reads a duplicate
descriptor).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket

import h11
import trio

from cosencfs.store.bodysend import DupFd, send_all, wait_for
from cosencfs.store.tlsstream import TlsStream

#: Ciphertext read from the socket per ``readv`` (into one reused buffer).
RECV = 256 * 1024

#: Thread jobs that receive bodies, at most.
RECEIVERS = trio.CapacityLimiter(16)

#: Bodies of at least this many bytes (by Content-Length) are read into one
#: buffer rather than through h11's (``Transport._read_large_body``).
DIRECT_BODY = 64 * 1024


def large_body_length(method: str, status: int, headers: dict[str, str]) -> int | None:
    """The length of a large body framed by Content-Length alone (h11 has parsed
    the head and checked the header), else None: h11 reads the body."""
    if method == "HEAD" or status < 200 or status in (204, 304):
        return None
    if "transfer-encoding" in headers:
        return None
    value = headers.get("content-length", "")
    if not value.isdigit() or int(value) < DIRECT_BODY:
        return None
    return int(value)


def headers_token(response: h11.Response, name: bytes) -> set[bytes]:
    """The comma-separated tokens of header ``name``, lowercase."""
    return {
        token.strip().lower()
        for key, value in response.headers
        if key == name
        for token in value.split(b",")
    }


async def receive_off_loop(
    sock: trio.socket.SocketType, tls: TlsStream, view: memoryview, stall: float
) -> tuple[int, int]:
    """Fill ``view`` from the connection: the bytes received (fewer only when
    the stream ended first) and the socket reads it took.

    Raises ``OSError`` (``TimeoutError`` when nothing arrived for ``stall``
    seconds, ``ssl.SSLError`` for bad records); cancelled, the socket is shut down.
    """
    dup = DupFd(sock)
    job = _Job(dup, tls, stall)
    try:
        got = await trio.to_thread.run_sync(
            job.run, view, limiter=RECEIVERS, abandon_on_cancel=True
        )
    except trio.Cancelled:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        dup.abandon()
        raise
    return got, job.reads


class _Job:
    """One body's receiving, run in a worker thread (no lock: see the module docstring)."""

    __slots__ = ("dup", "fd", "reads", "stall", "tls")

    def __init__(self, dup: DupFd, tls: TlsStream, stall: float) -> None:
        self.dup = dup
        self.fd = dup.fd  # closed by run(), if it runs
        self.tls = tls
        self.stall = stall
        self.reads = 0

    def run(self, view: memoryview) -> int:
        # Runs in a worker thread; holds no lock (the module's docstring).
        if not self.dup.start():
            raise OSError("cancelled before it started")
        try:
            return self._decrypt_into(self.tls, view)
        finally:
            os.close(self.fd)

    def _read(self, into: memoryview) -> int:
        while True:
            try:
                n = os.readv(self.fd, [into])
            except BlockingIOError:
                wait_for(self.fd, select.POLLIN, self.stall)
                continue
            self.reads += 1
            return n

    def _decrypt_into(self, tls: TlsStream, view: memoryview) -> int:
        raw = memoryview(bytearray(RECV))
        pos = 0
        while True:
            n, ended = tls.decrypt_into(view[pos:])
            pos += n
            out = tls.outgoing()
            if out:  # a key update's answer: rare, and small
                send_all(self.fd, out, self.stall)
            if pos == len(view) or ended:
                return pos
            if n:
                continue
            got = self._read(raw)
            tls.feed(raw[:got])
