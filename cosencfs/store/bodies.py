"""Request bodies: bytes in memory, or a range of a cache file read when sent."""

from __future__ import annotations

import os

from cosencfs.store.base import Body, FileRange


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
