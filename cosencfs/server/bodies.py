"""Request body readers: Content-Length, HTTP chunked and S3 ``aws-chunked``.

Every reader has ``readinto`` (0 at the end of the body) and ``readline``;
readers nest, since S3 tools may send aws-chunked inside HTTP chunked.
A body that ends early raises ClientGone: the handler then drops the
connection without an answer and without storing anything.
"""

from __future__ import annotations

from email.message import Message
from io import BufferedIOBase
from typing import Protocol

from cosencfs.server.errors import CosError

_MAX_LINE = 8192


class ClientGone(Exception):
    """The client went away (or stopped sending) in the middle of a request."""


class BodyReader(Protocol):
    @property
    def exhausted(self) -> bool: ...

    def readinto(self, buf: memoryview) -> int: ...

    def readline(self, limit: int) -> bytes: ...


class RawStream:
    """The connection itself, for bodies whose length is not declared."""

    __slots__ = ("_rfile",)

    def __init__(self, rfile: BufferedIOBase) -> None:
        self._rfile = rfile

    @property
    def exhausted(self) -> bool:
        return False

    def readinto(self, buf: memoryview) -> int:
        n = self._rfile.readinto(buf)
        if not n:
            raise ClientGone("connection closed inside a chunked body")
        return n

    def readline(self, limit: int) -> bytes:
        line = self._rfile.readline(limit)
        if not line:
            raise ClientGone("connection closed inside a chunked body")
        return line


class LengthBody:
    """A body of exactly ``length`` bytes."""

    __slots__ = ("_rfile", "remaining")

    def __init__(self, rfile: BufferedIOBase, length: int) -> None:
        self._rfile = rfile
        self.remaining = length

    @property
    def exhausted(self) -> bool:
        return self.remaining == 0

    def readinto(self, buf: memoryview) -> int:
        if self.remaining == 0:
            return 0
        if len(buf) > self.remaining:
            buf = buf[: self.remaining]
        n = self._rfile.readinto(buf)
        if not n:
            raise ClientGone(f"body ended {self.remaining} bytes early")
        self.remaining -= n
        return n

    def readline(self, limit: int) -> bytes:
        if self.remaining == 0:
            return b""
        line = self._rfile.readline(min(limit, self.remaining))
        if not line:
            raise ClientGone(f"body ended {self.remaining} bytes early")
        self.remaining -= len(line)
        return line


class ChunkedBody:
    """Decodes ``size[;ext]\\r\\n data \\r\\n ... 0\\r\\n trailers \\r\\n`` from ``source``.

    The same framing serves HTTP chunked transfer coding and S3's aws-chunked
    content coding (whose extensions are chunk signatures, not checked).
    """

    __slots__ = ("_finished", "_left", "_pending_crlf", "_source")

    def __init__(self, source: BodyReader) -> None:
        self._source = source
        self._left = 0
        self._pending_crlf = False
        self._finished = False

    @property
    def exhausted(self) -> bool:
        return self._finished

    def _next_chunk(self) -> None:
        if self._pending_crlf:
            if self._source.readline(_MAX_LINE).strip():
                raise CosError("InvalidRequest", "Malformed chunked body.")
            self._pending_crlf = False
        header = self._source.readline(_MAX_LINE)
        size_text = header.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise CosError("InvalidRequest", "Malformed chunk size in the body.") from None
        if size < 0:
            raise CosError("InvalidRequest", "Malformed chunk size in the body.")
        if size == 0:
            # Trailers (aws-chunked checksums) up to an empty line, or the end of the body.
            while self._source.readline(_MAX_LINE).strip():
                pass
            self._finished = True
        self._left = size

    def readinto(self, buf: memoryview) -> int:
        while self._left == 0:
            if self._finished:
                return 0
            self._next_chunk()
        if len(buf) > self._left:
            buf = buf[: self._left]
        n = self._source.readinto(buf)
        self._left -= n
        if self._left == 0:
            self._pending_crlf = True
        return n

    def readline(self, limit: int) -> bytes:
        # Only used for nested chunked framing, whose lines are short.
        out = bytearray()
        one = bytearray(1)
        view = memoryview(one)
        while len(out) < limit:
            if not self.readinto(view):
                break
            out += one
            if one == b"\n":
                break
        return bytes(out)


def drain(body: BodyReader, buf: memoryview) -> int:
    """Read and discard the rest of a body; returns the byte count."""
    total = 0
    while True:
        n = body.readinto(buf)
        if not n:
            return total
        total += n


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


def request_body(headers: Message, rfile: BufferedIOBase) -> Counted:
    """The request body reader, by Transfer-Encoding / Content-Length / aws-chunked."""
    reader: BodyReader
    if "chunked" in str(headers.get("Transfer-Encoding", "")).lower():
        reader = ChunkedBody(RawStream(rfile))
    else:
        raw = str(headers.get("Content-Length", "") or "0").strip()
        if not raw.isdigit():
            raise CosError("InvalidArgument", "Content-Length is not a number.")
        reader = LengthBody(rfile, int(raw))
    if str(headers.get("x-amz-content-sha256", "")).startswith("STREAMING-"):
        reader = ChunkedBody(reader)
    return Counted(reader)


def finish(body: BodyReader, buf: memoryview) -> bool:
    """Consume what the operation left of the body; True if the connection must close."""
    if body.exhausted:
        return False
    try:
        drain(body, buf)
    except CosError:
        return True
    return False
