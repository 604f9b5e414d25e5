"""Request bodies: bytes in memory, or a range of a cache file.

Small ranges are read into memory (one ``send``); larger ones are streamed
from the file by a reader that ``requests``/``http.client`` can size, so
memory stays bounded by the number of concurrent requests, not the file.
"""

from __future__ import annotations

import os

from cosencfs.store.base import Body, FileRange


class FileRangeReader:
    """A file-like request body over ``FileRange`` that requests can size and stream
    without reading the whole range into memory."""

    def __init__(self, rng: FileRange) -> None:
        self._fd = os.open(rng.path, os.O_RDONLY)
        self._pos = rng.offset
        self._end = rng.offset + rng.length

    def __len__(self) -> int:
        return self._end - self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._end - self._pos
        n = min(n, self._end - self._pos)
        if n <= 0:
            return b""
        data = os.pread(self._fd, n, self._pos)
        if len(data) < n:
            raise OSError(f"cache file shrank while uploading it ({len(data)} < {n} bytes)")
        self._pos += len(data)
        return data

    def close(self) -> None:
        os.close(self._fd)


#: Bodies up to this size are read into memory at once: one send() instead of
#: many small ones, and bounded by (concurrency x part size).
INLINE_BODY_MAX = 64 * 1024**2


def read_small_body(body: Body) -> bytes | bytearray | memoryview:
    """The bytes of a body small enough to hold in memory."""
    if not isinstance(body, FileRange):
        return body
    fd = os.open(body.path, os.O_RDONLY)
    try:
        data = os.pread(fd, body.length, body.offset)
    finally:
        os.close(fd)
    if len(data) != body.length:
        raise OSError(f"cache file shorter than the upload ({len(data)} < {body.length})")
    return data


class open_body:
    """Turn a ``Body`` (or no body) into what requests can send, and clean up after."""

    def __init__(self, body: Body | None) -> None:
        self._body = body
        self._reader: FileRangeReader | None = None

    def __enter__(self) -> bytes | bytearray | memoryview | FileRangeReader | None:
        body = self._body
        if not isinstance(body, FileRange):
            return body
        if body.length <= INLINE_BODY_MAX:
            return read_small_body(body)
        self._reader = FileRangeReader(body)
        return self._reader

    def __exit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.close()
