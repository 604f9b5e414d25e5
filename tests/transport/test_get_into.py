"""``CosStore.get_into`` over http and https: a large body is received straight
into the caller's buffer (no buffer of the transport's own), a small one
comes in the transport's bytes, an error's body is never written into it."""

from __future__ import annotations

import mmap
import os

import pytest

from cosencfs.errors import NotFoundError, PreconditionFailedError
from cosencfs.server import LocalCosServer
from cosencfs.store.bodyrecv import DIRECT_BODY
from tests.transport.conftest import StoreFactory

MIB = 1024 * 1024


async def test_large_bodies_land_in_the_callers_buffer(
    local: LocalCosServer, make_store: StoreFactory
) -> None:
    store = make_store(local.url)
    body = os.urandom(3 * MIB + 5)
    await store.put("k", body, {})
    etag = (await store.head("k")).etag
    buf = mmap.mmap(-1, 4 * MIB)
    asked: list[int] = []

    def give(n: int) -> memoryview:
        asked.append(n)
        return memoryview(buf)

    for start, end in [(0, len(body)), (16, 2 * MIB + 1), (MIB, MIB + DIRECT_BODY)]:
        got = await store.get_into("k", start, end, give, if_match=etag)
        assert got == body[start:end]
        assert got.obj is buf  # received in place: a view of the caller's buffer
        assert asked[-1] == end - start
    # A small answer comes through h11: the caller's buffer is not asked for.
    asked.clear()
    assert await store.get_into("k", 5, 105, give) == body[5:105]
    assert asked == []


async def test_error_bodies_are_not_written_into_the_buffer(
    local: LocalCosServer, make_store: StoreFactory
) -> None:
    store = make_store(local.url)
    await store.put("k", os.urandom(MIB), {})
    asked: list[int] = []

    def give(n: int) -> memoryview:
        asked.append(n)
        return memoryview(bytearray(n))

    with pytest.raises(NotFoundError):
        await store.get_into("missing", 0, MIB, give)
    with pytest.raises(PreconditionFailedError):
        await store.get_into("k", 0, MIB, give, if_match="not-its-etag")
    assert asked == []
