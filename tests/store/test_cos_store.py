"""The object-store layer (``cosencfs.store.cos.CosStore``) against the local COS server.

Every operation of the ``ObjectStore`` interface, error mapping to
``cosencfs.errors``, request/byte counters, the retry policy under injected
faults, ``make_cos_config`` addressing, and that no secret reaches a log.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio

import cosencfs.store.bodies as bodies_module
import cosencfs.store.bodysend as bodysend_module
import cosencfs.store.cos as cos_module
import cosencfs.store.transport as transport_module
from cosencfs.errors import (
    AccessDeniedError,
    ConfigError,
    InvalidRequestError,
    NoSuchBucketError,
    NoSuchUploadError,
    NotFoundError,
    PreconditionFailedError,
    StoreError,
    TransientError,
)
from cosencfs.faults import FaultKind
from cosencfs.server import LocalCosServer
from cosencfs.server.admin import admin_request
from cosencfs.store.base import FileRange, ListPage, ObjectStore
from cosencfs.store.cos import CosSettings, CosStore, make_cos_config
from cosencfs.store.cosproto import BadAnswer
from cosencfs.store.cosxml import list_page_from_xml
from cosencfs.store.counters import CounterSnapshot
from cosencfs.store.retry import RetryPolicy, is_retryable
from cosencfs.store.wire import Answer
from tests.store._store_helpers import MIB, ScriptedFaults, md5_hex, quick_policy
from tests.testlib import BUCKET, REGION, SECRET_ID, SECRET_KEY, make_store, start_server

VHOST = f"{BUCKET}.cos.{REGION}.myqcloud.com"


# ---------------------------------------------------------------------------- helpers


class Spent:
    """Counter difference over a block: ``with Spent(store) as s: ...; s.delta``."""

    def __init__(self, store: CosStore) -> None:
        self.store = store
        self.before = store.counters.snapshot()
        self._delta: CounterSnapshot | None = None

    def __enter__(self) -> Spent:
        self.before = self.store.counters.snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        self._delta = self.store.counters.snapshot().minus(self.before)

    @property
    def delta(self) -> CounterSnapshot:
        assert self._delta is not None
        return self._delta


def server_stats(server: LocalCosServer) -> dict[str, Any]:
    """The server's admin statistics: requests by operation and body bytes in/out."""
    status, data = admin_request(
        server.url, "GET", "/_cosencfs/stats", secret_id=SECRET_ID, secret_key=SECRET_KEY
    )
    assert status == 200, data
    return dict(data)


def reset_server_stats(server: LocalCosServer) -> None:
    server.reset_stats()
    assert server.stats() == {}


async def put_many(store: CosStore, keys: list[str], body: bytes = b"x") -> None:
    limiter = trio.CapacityLimiter(16)

    async def one(key: str) -> None:
        async with limiter:
            await store.put(key, body, {})

    async with trio.open_nursery() as nursery:
        for key in keys:
            nursery.start_soon(one, key)


async def collect(pages: Any) -> list[ListPage]:
    return [page async for page in pages]


def write_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------- basics


async def test_store_implements_the_interface(store: CosStore) -> None:
    assert isinstance(store, ObjectStore)
    assert store.bucket == BUCKET
    await store.head_bucket()
    assert store.counters.snapshot().requests == {"HeadBucket": 1}


async def test_head_reports_size_etag_time_type_and_metadata(store: CosStore) -> None:
    data = os.urandom(1000)
    meta = {
        "mode": "33188",
        "client-side-encryption-key": "a2V5+/w==",
        "Mixed-Case": "v a=l/u+e",
    }
    t0 = time.time()
    etag = await store.put("dir/obj.bin", data, meta, content_type="application/x-test")
    t1 = time.time()
    assert etag == md5_hex(data)
    info = await store.head("dir/obj.bin")
    assert info.key == "dir/obj.bin"
    assert info.size == 1000
    assert info.etag == md5_hex(data)  # without quotes
    # Last-Modified has one-second resolution.
    assert t0 - 2 <= info.last_modified <= t1 + 2
    assert info.content_type == "application/x-test"
    assert info.has_metadata
    # Lowercase names, without the x-cos-meta- prefix, values untouched; nothing else.
    assert dict(info.metadata) == {
        "mode": "33188",
        "client-side-encryption-key": "a2V5+/w==",
        "mixed-case": "v a=l/u+e",
    }


async def test_empty_object_and_empty_metadata(store: CosStore) -> None:
    etag = await store.put("empty", b"", {})
    info = await store.head("empty")
    assert (info.size, info.etag, dict(info.metadata)) == (0, md5_hex(b""), {})
    assert etag == info.etag
    assert await store.get("empty") == b""


async def test_get_whole_and_odd_ranges(store: CosStore) -> None:
    size = 100_003
    data = os.urandom(size)
    await store.put("r.bin", data, {})
    ranges: list[tuple[int, int | None]] = [
        (0, 1),
        (1, 17),
        (15, 33),
        (16, 32),
        (17, 4113),
        (4095, 4099),
        (65_535, 65_537),
        (size - 1, size),
        (0, size),
        (12_345, size + 1000),  # past the end: up to the end
        (size - 3, None),
        (7, None),
        (0, None),
    ]
    with Spent(store) as spent:
        assert await store.get("r.bin") == data
        for start, end in ranges:
            got = await store.get("r.bin", start, end)
            assert got == data[start:end], (start, end)
    expected_down = size + sum(len(data[s:e]) for s, e in ranges)
    assert spent.delta.requests == {"GetObject": len(ranges) + 1}
    assert spent.delta.bytes_down == expected_down
    assert spent.delta.bytes_up == 0
    assert spent.delta.failures == {}


async def test_empty_range_makes_no_request(store: CosStore, server: LocalCosServer) -> None:
    await store.put("r", b"0123456789", {})
    reset_server_stats(server)
    with Spent(store) as spent:
        assert await store.get("r", 5, 5) == b""
        assert await store.get("r", 7, 3) == b""
        # Even for a key that does not exist: no request is made at all.
        assert await store.get("no-such-key", 0, 0) == b""
    assert spent.delta.total_requests == 0
    assert server.stats() == {}


async def test_get_bounded_range_past_the_end_is_invalid(store: CosStore) -> None:
    await store.put("r", b"0123456789", {})
    with pytest.raises(InvalidRequestError) as exc:
        await store.get("r", 10, 20)
    assert exc.value.status == 416
    assert exc.value.code == "InvalidRange"
    assert exc.value.key == "r"


async def test_get_open_range_past_the_end_never_returns_other_bytes(store: CosStore) -> None:
    # 'Range: bytes=N-' with N >= size must not come back as the whole object.
    data = os.urandom(1000)
    await store.put("r", data, {})
    try:
        got = await store.get("r", 5000)
    except InvalidRequestError as exc:
        status = exc.status
    else:
        assert got == b""
        return
    assert status == 416


async def test_get_range_answered_with_the_whole_object_is_not_taken_for_the_range(
    recorder: Recorder,
) -> None:
    recorder.body = bytes(range(100))
    store = make_store(recorder.url, retry=quick_policy(max_attempts=1))
    got: bytes | None = None
    try:
        got = await store.get("k", 10, 20)
    except StoreError:
        pass  # refusing the answer is fine
    finally:
        store.close()
    assert recorder.seen[0]["range"] == "bytes=10-19"
    assert got is None or got == recorder.body[10:20]


async def test_get_if_match(store: CosStore) -> None:
    data = os.urandom(5000)
    etag = await store.put("m", data, {})
    assert await store.get("m", if_match=etag) == data
    assert await store.get("m", 100, 200, if_match=etag) == data[100:200]
    with Spent(store) as spent, pytest.raises(PreconditionFailedError) as exc:
        await store.get("m", if_match="0" * 32)
    assert exc.value.status == 412
    assert exc.value.key == "m"
    # Not retried: the answer will not change.
    assert spent.delta.requests == {"GetObject": 1}
    assert spent.delta.retries == 0
    # The real use: the object changed since its ETag was learnt.
    await store.put("m", b"new", {})
    with pytest.raises(PreconditionFailedError):
        await store.get("m", 0, 10, if_match=etag)


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview"])
async def test_put_bytes_like_bodies(store: CosStore, kind: str) -> None:
    raw = os.urandom(70_001)
    body: bytes | bytearray | memoryview
    if kind == "bytes":
        body, expected = raw, raw
    elif kind == "bytearray":
        body, expected = bytearray(raw), raw
    else:
        body, expected = memoryview(bytearray(raw))[33:], raw[33:]
    with Spent(store) as spent:
        etag = await store.put("b", body, {"k": "v"})
    assert etag == md5_hex(expected)
    assert await store.get("b") == expected
    assert spent.delta.bytes_up == len(expected)


@pytest.mark.parametrize("streamed", [False, True], ids=["inline", "streamed"])
async def test_put_file_range(
    store: CosStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    # Ranges under THREAD_BODY are read at once in the event loop; larger ones
    # are read and sent in one thread job (over http by os.sendfile, over
    # https step by step).  A small step takes that path cheaply.
    inline: list[FileRange] = []
    real_read = bodies_module.read_small_body

    def spy(body: FileRange) -> bytes | bytearray | memoryview:
        inline.append(body)
        return real_read(body)

    monkeypatch.setattr(transport_module, "read_small_body", spy)
    if not streamed:
        monkeypatch.setattr(transport_module, "THREAD_BODY", 4 * MIB)
    else:
        monkeypatch.setattr(bodysend_module, "STEP", 64 * 1024)
    jobs = store.transport.body_jobs
    data = os.urandom(3 * MIB + 7)
    path = write_file(tmp_path / "cache.bin", data)
    offset, length = 12_345, 2 * MIB + 3
    with Spent(store) as spent:
        etag = await store.put("fr", FileRange(str(path), offset, length), {"a": "1"})
    piece = data[offset : offset + length]
    assert etag == md5_hex(piece)
    assert await store.get("fr") == piece
    assert spent.delta.bytes_up == length
    assert spent.delta.requests == {"PutObject": 1}
    assert len(inline) == (0 if streamed else 1)
    assert store.transport.body_jobs - jobs == (1 if streamed else 0)


@pytest.mark.parametrize("streamed", [False, True], ids=["inline", "streamed"])
async def test_put_file_range_of_a_shrunken_file_stores_nothing(
    store: CosStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    # A cache file shorter than the range: the upload must fail, quickly, and
    # must not leave a truncated object behind.  (The inline path raises the
    # OSError as is; the streamed one a TransientError after its retries.)
    if streamed:
        monkeypatch.setattr(transport_module, "THREAD_BODY", 100)
        monkeypatch.setattr(bodysend_module, "STEP", 64)
    path = write_file(tmp_path / "short.bin", os.urandom(500))
    with trio.fail_after(15), pytest.raises((OSError, StoreError)):
        await store.put("short", FileRange(str(path), 100, 1000), {})
    with pytest.raises(NotFoundError):
        await store.head("short")


async def test_put_if_none_match(store: CosStore) -> None:
    first = os.urandom(100)
    await store.put("once", first, {}, if_none_match=True)
    with Spent(store) as spent, pytest.raises(PreconditionFailedError) as exc:
        await store.put("once", b"second", {}, if_none_match=True)
    assert exc.value.status == 412
    assert spent.delta.requests == {"PutObject": 1}
    assert spent.delta.retries == 0
    assert await store.get("once") == first
    # Without the condition the overwrite goes through.
    await store.put("once", b"second", {})
    assert await store.get("once") == b"second"


async def test_list_prefix_delimiter_marker_max_keys(store: CosStore) -> None:
    bodies = {k: os.urandom(10 + i) for i, k in enumerate(
        ["d/a/1", "d/a/2", "d/b/1", "d/c", "d/d/1", "d/e", "dz", "e"]
    )}  # fmt: skip
    t0 = time.time()
    for key, body in bodies.items():
        await store.put(key, body, {"mode": "1"})
    # Flat listing of a prefix, in key order, with sizes and ETags but no metadata.
    page = await store.list_objects(prefix="d/")
    assert [o.key for o in page.objects] == ["d/a/1", "d/a/2", "d/b/1", "d/c", "d/d/1", "d/e"]
    assert page.common_prefixes == []
    assert (page.truncated, page.next_marker) == (False, "")
    for o in page.objects:
        assert o.size == len(bodies[o.key])
        assert o.etag == md5_hex(bodies[o.key])
        assert not o.has_metadata
        assert dict(o.metadata) == {}
        assert t0 - 2 <= o.last_modified <= time.time() + 2
    # With a delimiter: files and common prefixes.
    page = await store.list_objects(prefix="d/", delimiter="/")
    assert [o.key for o in page.objects] == ["d/c", "d/e"]
    assert list(page.common_prefixes) == ["d/a/", "d/b/", "d/d/"]
    top = await store.list_objects(delimiter="/")
    assert [o.key for o in top.objects] == ["dz", "e"]
    assert list(top.common_prefixes) == ["d/"]
    # max_keys and markers: pages of two, following next_marker.
    page = await store.list_objects(prefix="d/", max_keys=2)
    assert [o.key for o in page.objects] == ["d/a/1", "d/a/2"]
    assert page.truncated
    assert page.next_marker == "d/a/2"
    page = await store.list_objects(prefix="d/", marker="d/b/1")
    assert [o.key for o in page.objects] == ["d/c", "d/d/1", "d/e"]
    # Paginating with a delimiter returns every entry exactly once.
    seen: list[str] = []
    marker = ""
    pages = 0
    while True:
        page = await store.list_objects(prefix="d/", delimiter="/", marker=marker, max_keys=2)
        pages += 1
        seen += [o.key for o in page.objects] + list(page.common_prefixes)
        if not page.truncated:
            break
        assert page.next_marker
        marker = page.next_marker
    assert sorted(seen) == ["d/a/", "d/b/", "d/c", "d/d/", "d/e"]
    assert len(seen) == len(set(seen))
    assert pages == 3
    # list_all follows the same markers.
    pages_all = await collect(store.list_all(prefix="d/", delimiter="/"))
    assert len(pages_all) == 1
    assert [o.key for o in pages_all[0].objects] == ["d/c", "d/e"]
    # max_keys below 1 is raised to 1.
    page = await store.list_objects(prefix="d/", max_keys=0)
    assert [o.key for o in page.objects] == ["d/a/1"]
    assert page.truncated
    # Nothing there.
    page = await store.list_objects(prefix="nothing/")
    assert (list(page.objects), list(page.common_prefixes), page.truncated) == ([], [], False)


async def test_listing_without_next_marker_continues_after_the_last_key(
    store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # COS leaves NextMarker out of truncated listings without a delimiter.
    keys = ["p/a", "p/b", "p/c/x", "p/d", "p/e"]
    for key in keys:
        await store.put(key, b"x", {})
    real_request = store.transport.request

    async def strip_next_marker(*args: Any, **kwargs: Any) -> Answer:
        answer = await real_request(*args, **kwargs)
        body = re.sub(rb"<NextMarker>[^<]*</NextMarker>", b"", answer.body)
        return Answer(answer.status, answer.headers, body)

    monkeypatch.setattr(store.transport, "request", strip_next_marker)
    seen: list[str] = []
    marker = ""
    while True:
        page = await store.list_objects(prefix="p/", marker=marker, max_keys=2)
        seen += [o.key for o in page.objects]
        if not page.truncated:
            break
        assert page.next_marker == seen[-1]
        marker = page.next_marker
    assert seen == keys


async def test_listing_round_trips_awkward_names(store: CosStore) -> None:
    # Listings are asked for URL-encoded: names XML cannot carry or that
    # look like escapes come back exactly.
    keys = ["n/a b", "n/a+b", "n/100%", "n/%41", "n/ü€😀", "n/tab\tx", "n/amp&<>'\"", "n/q?x=1#y"]
    for key in keys:
        await store.put(key, b"x", {})
    page = await store.list_objects(prefix="n/")
    assert sorted(o.key for o in page.objects) == sorted(keys)
    page = await store.list_objects(prefix="n/a+", delimiter="/")
    assert [o.key for o in page.objects] == ["n/a+b"]
    page = await store.list_objects(prefix="n/", marker="n/a b", max_keys=1)
    assert [o.key for o in page.objects] == ["n/a+b"]


def test_list_page_from_xml_namespaced_and_unencoded() -> None:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<ListBucketResult xmlns="http://www.qcloud.com/document/product/436/7751">'
        b"<Name>b-1250000000</Name><Prefix>d/</Prefix><Marker></Marker>"
        b"<MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated>"
        b"<Contents><Key>d/a%20b</Key><LastModified>2026-01-02T03:04:05.000Z</LastModified>"
        b'<ETag>"abc"</ETag><Size>7</Size></Contents>'
        b"<CommonPrefixes><Prefix>d/z/</Prefix></CommonPrefixes>"
        b"</ListBucketResult>"
    )
    page = list_page_from_xml(body)
    # Without <EncodingType>url</EncodingType> names are taken as they are.
    assert [(o.key, o.size, o.etag) for o in page.objects] == [("d/a%20b", 7, "abc")]
    assert page.objects[0].last_modified == 1767323045.0
    assert not page.objects[0].has_metadata
    assert list(page.common_prefixes) == ["d/z/"]
    assert (page.truncated, page.next_marker) == (True, "d/z/")
    with pytest.raises(BadAnswer):
        list_page_from_xml(b"<html>proxy error")


async def test_list_all_and_delete_many_over_1000_keys(
    store: CosStore, server: LocalCosServer
) -> None:
    keys = [f"many/{i:05d}" for i in range(1105)]
    await put_many(store, keys)
    await store.put("other", b"y", {})
    # One page is at most 1000 keys, whatever is asked.
    page = await store.list_objects(prefix="many/", max_keys=5000)
    assert len(page.objects) == 1000
    assert page.truncated
    with Spent(store) as spent:
        pages = await collect(store.list_all(prefix="many/"))
    assert [len(p.objects) for p in pages] == [1000, 105]
    assert [o.key for p in pages for o in p.objects] == keys
    assert spent.delta.requests == {"ListObjects": 2}
    # The whole bucket, with a delimiter: the prefix folds into one entry.
    folded = await collect(store.list_all(delimiter="/"))
    assert [o.key for p in folded for o in p.objects] == ["other"]
    assert [c for p in folded for c in p.common_prefixes] == ["many/"]

    with Spent(store) as spent:
        failures = await store.delete_many([*keys, "many/not-there"])
    assert failures == {}
    # Batches of at most 1000 keys.
    assert spent.delta.requests == {"DeleteMultipleObjects": 2}
    assert await collect(store.list_all(prefix="many/")) == [ListPage([], [], "", False)]
    assert await store.get("other") == b"y"


async def test_delete_many_of_nothing_makes_no_request(store: CosStore) -> None:
    with Spent(store) as spent:
        assert await store.delete_many([]) == {}
    assert spent.delta.total_requests == 0


async def test_copy_keeps_or_replaces_metadata(store: CosStore) -> None:
    data = os.urandom(10_000)
    meta = {
        "mode": "33188",
        "client-side-encryption-key": "S0VZ",
        "client-side-encryption-iv": "SVY=",
    }
    src_etag = await store.put("src", data, meta, content_type="text/x-src")

    # Directive Copy: the envelope and attributes travel with the bytes.
    with Spent(store) as spent:
        etag = await store.copy("src", "dst-copy")
    assert spent.delta.requests == {"HeadObject": 1, "CopyObject": 1}
    info = await store.head("dst-copy")
    assert etag == info.etag == src_etag
    assert dict(info.metadata) == meta
    assert info.content_type == "text/x-src"
    assert await store.get("dst-copy") == data

    # Directive Replaced: exactly the new metadata.
    new_meta = {"mode": "33261", "client-side-encryption-key": "S0VZ"}
    with Spent(store) as spent:
        await store.copy(
            "src", "dst-repl", metadata=new_meta, content_type="text/x-new", size=len(data)
        )
    # A known size saves the HEAD.
    assert spent.delta.requests == {"CopyObject": 1}
    info = await store.head("dst-repl")
    assert dict(info.metadata) == new_meta
    assert info.content_type == "text/x-new"
    assert await store.get("dst-repl") == data

    # Onto itself with new metadata (chmod of a file): bytes stay, metadata changes.
    await store.copy("src", "src", metadata={"mode": "1"}, size=len(data))
    info = await store.head("src")
    assert dict(info.metadata) == {"mode": "1"}
    assert await store.get("src") == data


async def test_copy_of_a_missing_source(store: CosStore) -> None:
    for size in (None, 10):
        with pytest.raises(NotFoundError):
            await store.copy("nope", "dst", size=size)
    with pytest.raises(NotFoundError):
        await store.head("dst")


@pytest.fixture
def small_copy_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend simple copies stop at 3 MiB and part copies are 1 MiB."""
    monkeypatch.setattr(cos_module, "MAX_PUT_BYTES", 3 * MIB)
    monkeypatch.setattr(cos_module, "COPY_PART_BYTES", 1 * MIB)


@pytest.mark.parametrize("replace", [False, True], ids=["copy", "replaced"])
async def test_large_copy_uses_part_copies(
    store: CosStore, monkeypatch: pytest.MonkeyPatch, replace: bool
) -> None:
    data = os.urandom(5 * MIB + 123)
    meta = {"mode": "33188", "client-side-encryption-key": "S0VZ"}
    await store.put("big", data, meta, content_type="text/x-big")
    monkeypatch.setattr(cos_module, "MAX_PUT_BYTES", 3 * MIB)
    monkeypatch.setattr(cos_module, "COPY_PART_BYTES", 1 * MIB)
    new_meta = {"mode": "1"}
    with Spent(store) as spent:
        etag = await store.copy(
            "big",
            "big-copy",
            metadata=new_meta if replace else None,
            content_type="text/x-new" if replace else "",
            size=len(data),
        )
    assert spent.delta.requests == {
        "HeadObject": 1,
        "InitiateMultipartUpload": 1,
        "UploadPartCopy": 6,
        "CompleteMultipartUpload": 1,
    }
    assert etag.endswith("-6")
    info = await store.head("big-copy")
    assert info.etag == etag
    assert info.size == len(data)
    assert dict(info.metadata) == (new_meta if replace else meta)
    assert info.content_type == ("text/x-new" if replace else "text/x-big")
    assert await store.get("big-copy") == data
    assert await store.list_uploads() == []


async def test_large_copy_if_match_wrong(store: CosStore, small_copy_limits: None) -> None:
    # 3 MiB is now "too large" for a simple PUT too: upload it in parts.
    upload_id = await store.create_multipart("big", {})
    part = os.urandom(2 * MIB)
    etags = [await store.upload_part("big", upload_id, n, part) for n in (1, 2)]
    await store.complete_multipart("big", upload_id, [(1, etags[0]), (2, etags[1])])
    with pytest.raises(PreconditionFailedError):
        await store.copy("big", "big-copy", if_match="0" * 32)
    with pytest.raises(NotFoundError):
        await store.head("big-copy")
    assert await store.list_uploads() == []


async def test_multipart_lifecycle(store: CosStore, tmp_path: Path) -> None:
    meta = {"mode": "33188", "client-side-encryption-iv": "SVY="}
    t0 = time.time()
    upload_id = await store.create_multipart("mp/obj", meta, content_type="text/x-mp")
    assert upload_id
    uploads = await store.list_uploads(prefix="mp/")
    assert [(u.key, u.upload_id) for u in uploads] == [("mp/obj", upload_id)]
    assert t0 - 2 <= uploads[0].initiated <= time.time() + 2
    assert await store.list_uploads(prefix="other/") == []

    p1 = os.urandom(MIB + 16)
    file_data = os.urandom(3 * MIB)
    path = write_file(tmp_path / "part.bin", file_data)
    p2 = file_data[MIB : 2 * MIB + 32]
    p3 = os.urandom(1001)  # the last part may be small
    with Spent(store) as spent:
        # Out of order and concurrently: parts are independent.
        etags: dict[int, str] = {}

        async def up(n: int, body: bytes | FileRange) -> None:
            etags[n] = await store.upload_part("mp/obj", upload_id, n, body)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(up, 3, p3)
            nursery.start_soon(up, 1, p1)
            nursery.start_soon(up, 2, FileRange(str(path), MIB, len(p2)))
    assert spent.delta.requests == {"UploadPart": 3}
    assert spent.delta.bytes_up == len(p1) + len(p2) + len(p3)
    assert etags == {1: md5_hex(p1), 2: md5_hex(p2), 3: md5_hex(p3)}

    parts = await store.list_parts("mp/obj", upload_id)
    assert [(p.part_number, p.etag, p.size) for p in parts] == [
        (1, md5_hex(p1), len(p1)),
        (2, md5_hex(p2), len(p2)),
        (3, md5_hex(p3), len(p3)),
    ]
    etag = await store.complete_multipart("mp/obj", upload_id, sorted(etags.items()))
    digests = b"".join(hashlib.md5(p).digest() for p in (p1, p2, p3))
    assert etag == hashlib.md5(digests).hexdigest() + "-3"
    info = await store.head("mp/obj")
    assert (info.etag, info.size) == (etag, len(p1) + len(p2) + len(p3))
    assert dict(info.metadata) == meta
    assert info.content_type == "text/x-mp"
    assert await store.get("mp/obj") == p1 + p2 + p3
    assert await store.list_uploads() == []


async def test_complete_repeated_after_success_returns_the_object_etag(store: CosStore) -> None:
    # What a retried complete sees when the first attempt's answer got lost.
    upload_id = await store.create_multipart("mp", {})
    a, b = os.urandom(MIB), os.urandom(10)
    parts = [
        (1, await store.upload_part("mp", upload_id, 1, a)),
        (2, await store.upload_part("mp", upload_id, 2, b)),
    ]
    etag = await store.complete_multipart("mp", upload_id, parts)
    assert await store.complete_multipart("mp", upload_id, parts) == etag
    # A different part count is not mistaken for the same upload.
    with pytest.raises(NoSuchUploadError):
        await store.complete_multipart("mp", upload_id, parts[:1])
    assert await store.get("mp") == a + b


async def test_multipart_abort(store: CosStore) -> None:
    keep = await store.create_multipart("keep", {})
    upload_id = await store.create_multipart("gone", {"a": "1"})
    await store.upload_part("gone", upload_id, 1, b"part")
    await store.abort_multipart("gone", upload_id)
    assert [u.upload_id for u in await store.list_uploads()] == [keep]
    with pytest.raises(NoSuchUploadError):
        await store.upload_part("gone", upload_id, 2, b"more")
    with pytest.raises(NoSuchUploadError):
        await store.list_parts("gone", upload_id)
    await store.abort_multipart("gone", upload_id)  # again: fine
    with pytest.raises(NotFoundError):
        await store.complete_multipart("gone", upload_id, [(1, md5_hex(b"part"))])
    with pytest.raises(NotFoundError):
        await store.head("gone")
    await store.abort_multipart("keep", keep)
    assert await store.list_uploads() == []


# ---------------------------------------------------------------------------- errors


async def test_missing_bucket(server: LocalCosServer) -> None:
    store = make_store(server.url, bucket="missing-1250000000")
    try:
        with pytest.raises(NoSuchBucketError) as exc:
            await store.head_bucket()
        assert exc.value.status == 404
        with pytest.raises(NoSuchBucketError):
            await store.get("k")
        with pytest.raises(NoSuchBucketError):
            await store.put("k", b"x", {})
        with pytest.raises(NoSuchBucketError):
            await store.list_objects()
        # HEAD answers have no body; the local server (like COS) names the
        # error in x-cos-error-code, which the data path reads.
        with pytest.raises(NoSuchBucketError):
            await store.head("k")
        assert store.counters.snapshot().retries == 0
    finally:
        store.close()


async def test_wrong_secret_key_is_access_denied(server: LocalCosServer) -> None:
    store = make_store(server.url, secret_key="not-the-secret-key")
    try:
        calls: list[Callable[[], Awaitable[object]]] = [
            store.head_bucket,
            lambda: store.head("k"),
            lambda: store.get("k"),
            lambda: store.put("k", b"x", {}),
            store.list_objects,
            lambda: store.copy("a", "b", size=1),
            lambda: store.create_multipart("k", {}),
        ]
        for call in calls:
            with pytest.raises(AccessDeniedError) as exc:
                await call()
            assert exc.value.status == 403
        snap = store.counters.snapshot()
        # Never retried: one request per call.
        assert snap.total_requests == len(calls)
        assert sum(snap.failures.values()) == len(calls)
        assert snap.retries == 0
        assert server.stats().get("PutObject") == 1
    finally:
        store.close()


async def test_missing_key_is_not_found(store: CosStore) -> None:
    with Spent(store) as spent:
        with pytest.raises(NotFoundError) as exc:
            await store.head("nope/key")
        assert (exc.value.status, exc.value.key, exc.value.op) == (404, "nope/key", "HeadObject")
        with pytest.raises(NotFoundError) as exc:
            await store.get("nope/key")
        assert exc.value.code == "NoSuchKey"
        with pytest.raises(NotFoundError):
            await store.get("nope/key", 10, 20)
    assert not isinstance(exc.value, NoSuchBucketError | NoSuchUploadError)
    assert spent.delta.requests == {"HeadObject": 1, "GetObject": 2}
    assert spent.delta.failures == {"HeadObject": 1, "GetObject": 2}
    assert spent.delta.retries == 0


ODD_KEYS = [
    "dir/a b+c%25d&e=f?g#h.txt",
    "中文/文件 名.bin",
    "~tilde/-_.!*'()",
    "a//double",
    "x/./dot",
    "x/../dotdot",
    "trailing space ",
    "semi;colon,comma@at$dollar",
]


async def test_odd_keys_round_trip(store: CosStore) -> None:
    for key in ODD_KEYS:
        body = key.encode() * 3
        assert await store.put(key, body, {"k": "v"}) == md5_hex(body)
        assert await store.get(key) == body
        assert await store.get(key, 1, 5) == body[1:5]
        assert (await store.head(key)).size == len(body)
        await store.copy(key, key + ".copy")
        assert await store.get(key + ".copy") == body
        page = await store.list_objects(prefix=key)
        assert [o.key for o in page.objects] == [key, key + ".copy"]
    assert await store.delete_many([k + ".copy" for k in ODD_KEYS]) == {}
    for key in ODD_KEYS:
        await store.delete(key)
    assert (await store.list_objects()).objects == []


# ---------------------------------------------------------------------------- counters


async def test_counters_match_the_server(store: CosStore, server: LocalCosServer) -> None:
    reset_server_stats(server)
    before = store.counters.snapshot()
    sent = 0
    received = 0
    bodies = [os.urandom(n) for n in (0, 1, 1000, 65_537, 300_001)]
    for i, body in enumerate(bodies):
        await store.put(f"c/{i}", body, {"i": str(i)})
        sent += len(body)
    for i, body in enumerate(bodies):
        received += len(await store.get(f"c/{i}"))
        if len(body) > 1:
            received += len(await store.get(f"c/{i}", 1, 100))
    assert received == sum(len(b) + len(b[1:100]) for b in bodies)
    io_only = store.counters.snapshot().minus(before)
    stats = server_stats(server)
    # Every body byte the store counted is a byte the server saw, both ways.
    assert io_only.bytes_up == sent == stats["bytes_in"]
    assert io_only.bytes_down == received == stats["bytes_out"]

    await store.head("c/1")
    await store.list_objects(prefix="c/")
    await store.copy("c/1", "c/copy")
    with pytest.raises(NotFoundError):
        await store.head("c/missing")
    upload_id = await store.create_multipart("c/mp", {})
    etag = await store.upload_part("c/mp", upload_id, 1, b"part")
    await store.list_parts("c/mp", upload_id)
    await store.complete_multipart("c/mp", upload_id, [(1, etag)])
    await store.list_uploads()
    await store.delete("c/copy")
    await store.delete_many(["c/0", "c/1"])

    spent = store.counters.snapshot().minus(before)
    # The store counts exactly the requests the server received, by the same names.
    assert spent.requests == server.stats()
    assert spent.requests == {
        "PutObject": 5,
        "GetObject": 8,
        "HeadObject": 3,  # head, copy's size lookup, the missing one
        "ListObjects": 1,
        "CopyObject": 1,
        "InitiateMultipartUpload": 1,
        "UploadPart": 1,
        "ListParts": 1,
        "CompleteMultipartUpload": 1,
        "ListMultipartUploads": 1,
        "DeleteObject": 1,
        "DeleteMultipleObjects": 1,
    }
    assert spent.total_requests == 25
    assert spent.failures == {"HeadObject": 1}
    assert spent.retries == 0
    assert spent.bytes_up == sent + 4
    assert spent.as_dict()["total_requests"] == 25


async def test_counters_under_concurrency(store: CosStore, server: LocalCosServer) -> None:
    reset_server_stats(server)
    keys = [f"k{i}" for i in range(200)]
    with Spent(store) as spent:
        await put_many(store, keys, b"12345")
    assert spent.delta.requests == {"PutObject": 200} == server.stats()
    assert spent.delta.bytes_up == 1000


def test_counter_snapshot_minus_and_as_dict() -> None:
    earlier = CounterSnapshot(
        requests={"GetObject": 2, "HeadObject": 1},
        failures={"GetObject": 1},
        retries=1,
        bytes_up=10,
        bytes_down=100,
    )
    later = CounterSnapshot(
        requests={"GetObject": 5, "HeadObject": 1, "PutObject": 2},
        failures={"GetObject": 1, "PutObject": 1},
        retries=4,
        bytes_up=30,
        bytes_down=150,
    )
    diff = later.minus(earlier)
    # Operations without new requests drop out.
    assert diff.requests == {"GetObject": 3, "PutObject": 2}
    assert diff.failures == {"PutObject": 1}
    assert (diff.retries, diff.bytes_up, diff.bytes_down) == (3, 20, 50)
    assert diff.total_requests == 5
    assert later.minus(later).as_dict() == {
        "requests": {},
        "total_requests": 0,
        "failures": {},
        "retries": 0,
        "bytes_up": 0,
        "bytes_down": 0,
        "connections": {},
    }
    requests = later.as_dict()["requests"]
    assert isinstance(requests, dict)
    assert list(requests) == ["GetObject", "HeadObject", "PutObject"]


# ---------------------------------------------------------------------------- retries


def test_retry_policy_delays_grow_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=10, deadline=30, base_delay=0.1, max_delay=1.0)
    rng = random.Random(5)
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays), attempt
        assert max(delays) - min(delays) > cap / 4  # jittered, not in step


@pytest.mark.parametrize(
    ("status", "code", "retry"),
    [
        (500, "InternalError", True),
        (502, "", True),
        (503, "SlowDown", True),
        (504, "", True),
        (429, "", True),
        (200, "InternalError", True),  # a copy answered 200 + <Error>
        (400, "RequestTimeout", True),
        (404, "NoSuchKey", False),
        (403, "AccessDenied", False),
        (412, "PreconditionFailed", False),
        (400, "InvalidArgument", False),
    ],
)
def test_is_retryable(status: int, code: str, retry: bool) -> None:
    assert is_retryable(status, code) is retry


async def test_everything_succeeds_despite_random_faults(
    faulty_store: CosStore,
    faulty_server: LocalCosServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = faulty_store
    faulty_server.reset_stats()
    # Streamed bodies too: they are reopened on every attempt.
    monkeypatch.setattr(bodysend_module, "STEP", 64 * 1024)
    monkeypatch.setattr(transport_module, "THREAD_BODY", 256 * 1024)
    file_data = os.urandom(2 * MIB)
    path = write_file(tmp_path / "src.bin", file_data)
    bodies = {f"f/{i:02d}": os.urandom(1000 * i + 7) for i in range(20)}
    ranged = {f"g/{i:02d}": (i * 50_000, 300_000 + i * 13) for i in range(10)}

    async def put(key: str, body: bytes) -> None:
        assert await store.put(key, body, {"n": key}) == md5_hex(body)

    async def put_range(key: str, rng: tuple[int, int]) -> None:
        await store.put(key, FileRange(str(path), rng[0], rng[1]), {})

    async with trio.open_nursery() as nursery:
        for key, body in bodies.items():
            nursery.start_soon(put, key, body)
        for key, rng in ranged.items():
            nursery.start_soon(put_range, key, rng)

    async def check(key: str, body: bytes) -> None:
        assert await store.get(key) == body
        assert await store.get(key, 3, 1003) == body[3:1003]
        info = await store.head(key)
        assert (info.size, info.etag, dict(info.metadata)) == (len(body), md5_hex(body), {"n": key})

    async def check_range(key: str, rng: tuple[int, int]) -> None:
        assert await store.get(key) == file_data[rng[0] : rng[0] + rng[1]]

    async with trio.open_nursery() as nursery:
        for key, body in bodies.items():
            nursery.start_soon(check, key, body)
        for key, rng in ranged.items():
            nursery.start_soon(check_range, key, rng)

    pages = await collect(store.list_all(prefix="f/"))
    assert [o.key for p in pages for o in p.objects] == sorted(bodies)

    # Copies (CopyObject may also be answered 200 with an <Error> body here).
    for i in range(10):
        key = f"f/{i:02d}"
        if i % 2:
            await store.copy(key, f"c/{i}", metadata={"copied": "yes"}, size=len(bodies[key]))
        else:
            await store.copy(key, f"c/{i}", if_match=md5_hex(bodies[key]))
    for i in range(10):
        key = f"f/{i:02d}"
        assert await store.get(f"c/{i}") == bodies[key]
        expected = {"copied": "yes"} if i % 2 else {"n": key}
        assert dict((await store.head(f"c/{i}")).metadata) == expected

    # Multipart, parts in parallel, one of them from the file.
    upload_id = await store.create_multipart("mp", {"m": "1"})
    p1, p3 = os.urandom(MIB), os.urandom(5000)
    etags: dict[int, str] = {}

    async def part(n: int, body: bytes | FileRange) -> None:
        etags[n] = await store.upload_part("mp", upload_id, n, body)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(part, 1, p1)
        nursery.start_soon(part, 2, FileRange(str(path), 0, MIB))
        nursery.start_soon(part, 3, p3)
    assert [p.part_number for p in await store.list_parts("mp", upload_id)] == [1, 2, 3]
    assert [u.upload_id for u in await store.list_uploads()] == [upload_id]
    await store.complete_multipart("mp", upload_id, sorted(etags.items()))
    assert await store.get("mp") == p1 + file_data[:MIB] + p3

    assert await store.delete_many(sorted(bodies)) == {}
    assert (await store.list_objects(prefix="f/")).objects == []

    snap = store.counters.snapshot()
    failed = sum(snap.failures.values())
    assert failed > 20, snap.as_dict()
    # Every failure was followed by a retry, and every attempt reached the server.
    assert snap.retries == failed
    assert snap.requests == faulty_server.stats()
    assert snap.bytes_up > sum(map(len, bodies.values())) + sum(r[1] for r in ranged.values())


@pytest.mark.parametrize("op", ["head", "get", "put", "list", "copy", "upload_part"])
async def test_gives_up_after_max_attempts(server: LocalCosServer, op: str) -> None:
    store = make_store(server.url, retry=quick_policy(max_attempts=3, deadline=10))
    try:
        await store.put("k", b"data", {})
        upload_id = await store.create_multipart("mp", {})
        server.set_faults(1.0)
        server.reset_stats()
        before = store.counters.snapshot()
        calls: dict[str, tuple[str, Callable[[], Awaitable[object]]]] = {
            "head": ("HeadObject", lambda: store.head("k")),
            "get": ("GetObject", lambda: store.get("k")),
            "put": ("PutObject", lambda: store.put("k", b"new", {})),
            "list": ("ListObjects", store.list_objects),
            "copy": ("CopyObject", lambda: store.copy("k", "k2", size=4)),
            "upload_part": ("UploadPart", lambda: store.upload_part("mp", upload_id, 1, b"p")),
        }
        name, call = calls[op]
        with trio.fail_after(10), pytest.raises(TransientError) as exc:
            await call()
        assert exc.value.op == name
        spent = store.counters.snapshot().minus(before)
        assert spent.requests == {name: 3}
        assert spent.failures == {name: 3}
        assert spent.retries == 2
        assert server.stats() == {name: 3}
        server.set_faults(0.0)
        assert await store.get("k") == b"data"
    finally:
        server.set_faults(0.0)
        store.close()


async def test_deadline_bounds_the_retries(server: LocalCosServer) -> None:
    policy = RetryPolicy(max_attempts=1000, deadline=0.6, base_delay=0.05, max_delay=0.1)
    store = make_store(server.url, retry=policy)
    try:
        server.set_faults(1.0)
        t0 = time.monotonic()
        with trio.fail_after(5), pytest.raises(TransientError):
            await store.head("k")
        elapsed = time.monotonic() - t0
        attempts = store.counters.snapshot().requests["HeadObject"]
        assert elapsed < 2.0
        assert 3 <= attempts < 100
    finally:
        server.set_faults(0.0)
        store.close()


async def test_connection_refused_is_transient_and_bounded(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "dead")
    url = srv.url
    srv.stop()
    # Many attempts allowed, but the deadline stops them.
    store = make_store(url, retry=RetryPolicy(max_attempts=10_000, deadline=1.0, base_delay=0.05))
    counted = make_store(url, retry=quick_policy(max_attempts=3))
    try:
        t0 = time.monotonic()
        with trio.fail_after(10), pytest.raises(TransientError) as exc:
            await store.get("k")
        assert time.monotonic() - t0 < 5
        assert exc.value.status == 0
        snap = store.counters.snapshot()
        assert snap.requests["GetObject"] >= 2
        assert snap.failures == snap.requests
        with trio.fail_after(10), pytest.raises(TransientError):
            await counted.put("k", b"x", {})
        snap = counted.counters.snapshot()
        assert (snap.requests, snap.failures, snap.retries) == (
            {"PutObject": 3},
            {"PutObject": 3},
            2,
        )
    finally:
        store.close()
        counted.close()


async def test_unanswered_request_times_out() -> None:
    # A listener that accepts connections but never answers.
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
        store = make_store(
            f"http://127.0.0.1:{port}", timeout=0.3, retry=quick_policy(max_attempts=2)
        )
        try:
            t0 = time.monotonic()
            with trio.fail_after(10), pytest.raises(TransientError):
                await store.head("k")
            assert time.monotonic() - t0 < 5
            assert store.counters.snapshot().requests == {"HeadObject": 2}
        finally:
            store.close()


async def test_latency_within_the_timeout_succeeds(server: LocalCosServer) -> None:
    # A small timeout, above the latency: every request is slow but succeeds.
    store = make_store(server.url, timeout=1.0, retry=quick_policy(max_attempts=1))
    try:
        server.set_faults(0.0, latency_ms=150)
        t0 = time.monotonic()
        await store.put("slow", b"abc", {})
        assert await store.get("slow") == b"abc"
        assert (await store.head("slow")).size == 3
        assert time.monotonic() - t0 >= 0.45
        assert store.counters.snapshot().failures == {}
        # A timeout shorter than the latency fails, and is not a hang.
        impatient = make_store(server.url, timeout=0.05, retry=quick_policy(max_attempts=2))
        try:
            with trio.fail_after(5), pytest.raises(TransientError):
                await impatient.head("slow")
        finally:
            impatient.close()
    finally:
        server.set_faults(0.0)
        store.close()


async def test_concurrency_is_limited(server: LocalCosServer) -> None:
    settings = CosSettings(
        bucket=BUCKET,
        region=REGION,
        endpoint=server.url,
        secret_id=SECRET_ID,
        secret_key=SECRET_KEY,
        concurrency=2,
        timeout=5,
    )
    store = CosStore(settings)
    try:
        assert store.transport.limiter.total_tokens == 2
        conf = make_cos_config(settings)
        assert (conf._pool_connections, conf._pool_maxsize) == (2, 2)
        await store.put("k", b"x", {})
        server.set_faults(0.0, latency_ms=150)
        t0 = time.monotonic()
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(store.head, "k")
        # Six requests, two at a time, 150 ms each.
        assert time.monotonic() - t0 >= 0.44
    finally:
        server.set_faults(0.0)
        store.close()


async def test_copy_answered_200_with_error_is_retried(
    store: CosStore, scripted: ScriptedFaults
) -> None:
    data = os.urandom(4000)
    await store.put("src", data, {"a": "1"})
    scripted.copy_script = [FaultKind.ERROR_200]
    with Spent(store) as spent:
        etag = await store.copy("src", "dst", size=len(data))
    assert scripted.injected == [FaultKind.ERROR_200]
    assert etag == md5_hex(data)
    assert await store.get("dst") == data
    assert dict((await store.head("dst")).metadata) == {"a": "1"}
    assert spent.delta.requests == {"CopyObject": 2}
    assert spent.delta.failures == {"CopyObject": 1}
    assert spent.delta.retries == 1


async def test_copy_answered_200_with_error_is_not_success(
    server: LocalCosServer, scripted: ScriptedFaults
) -> None:
    store = make_store(server.url, retry=quick_policy(max_attempts=1))
    try:
        await store.put("src", b"data", {})
        scripted.copy_script = [FaultKind.ERROR_200]
        with pytest.raises(TransientError) as exc:
            await store.copy("src", "dst", size=4)
        assert exc.value.status == 200
        assert exc.value.code == "InternalError"
        with pytest.raises(NotFoundError):
            await store.head("dst")
    finally:
        store.close()


async def test_complete_answered_200_with_error_is_retried(
    store: CosStore, scripted: ScriptedFaults
) -> None:
    upload_id = await store.create_multipart("mp", {})
    etag = await store.upload_part("mp", upload_id, 1, b"only part")
    scripted.script = [FaultKind.ERROR_200]
    with Spent(store) as spent:
        final = await store.complete_multipart("mp", upload_id, [(1, etag)])
    assert scripted.injected == [FaultKind.ERROR_200]
    assert final.endswith("-1")
    assert await store.get("mp") == b"only part"
    assert spent.delta.requests["CompleteMultipartUpload"] == 2
    assert spent.delta.retries == 1


async def test_large_copy_part_copy_answered_200_with_error_is_retried(
    store: CosStore, scripted: ScriptedFaults, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 * MIB + 5)
    await store.put("big", data, {"a": "1"})
    monkeypatch.setattr(cos_module, "MAX_PUT_BYTES", 2 * MIB)
    monkeypatch.setattr(cos_module, "COPY_PART_BYTES", 2 * MIB)
    # HEAD, Initiate, then the first UploadPartCopy answers 200 + <Error>.
    scripted.script = [None, None, FaultKind.ERROR_200]
    await store.copy("big", "big-copy")
    assert scripted.injected == [FaultKind.ERROR_200]
    assert await store.get("big-copy") == data


@pytest.mark.parametrize("fault", [FaultKind.RESET, FaultKind.SLOW_DOWN])
@pytest.mark.parametrize("streamed", [False, True], ids=["inline", "streamed"])
async def test_file_range_body_is_resent_on_retry(
    store: CosStore,
    scripted: ScriptedFaults,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault: FaultKind,
    streamed: bool,
) -> None:
    if streamed:
        monkeypatch.setattr(bodysend_module, "STEP", 4096)
    else:
        monkeypatch.setattr(transport_module, "THREAD_BODY", 2 * MIB)
    data = os.urandom(MIB + 100)
    path = write_file(tmp_path / "f", data)
    scripted.script = [fault]
    with Spent(store) as spent:
        await store.put("k", FileRange(str(path), 50, MIB), {})
        upload_id = await store.create_multipart("mp", {})
        scripted.script = [fault]
        etag = await store.upload_part("mp", upload_id, 1, FileRange(str(path), 0, MIB))
    assert scripted.injected == [fault, fault]
    assert await store.get("k") == data[50 : 50 + MIB]
    assert etag == md5_hex(data[:MIB])
    assert spent.delta.retries == 2
    assert spent.delta.requests == {"PutObject": 2, "InitiateMultipartUpload": 1, "UploadPart": 2}
    # Each attempt sent the whole body.
    assert spent.delta.bytes_up == 4 * MIB


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("endpoint", "ip", "port", "scheme"),
    [
        ("http://127.0.0.1:9000", "127.0.0.1", 9000, "http"),
        ("http://localhost:8080", "localhost", 8080, "http"),
        ("http://10.1.2.3", "10.1.2.3", None, "http"),
        ("https://storage.internal.example:8443", "storage.internal.example", 8443, "https"),
    ],
)
def test_make_cos_config_ip_mode(endpoint: str, ip: str, port: int | None, scheme: str) -> None:
    conf = make_cos_config(
        CosSettings(bucket=BUCKET, region=REGION, endpoint=endpoint, secret_id="i", secret_key="k")
    )
    assert (conf._ip, conf._port, conf._scheme) == (ip, port, scheme)
    where = ip if port is None else f"{ip}:{port}"
    # Connects to the address, and names the bucket in the Host header.
    assert conf.uri(bucket=BUCKET, path="a b/c") == f"{scheme}://{where}/a%20b/c"
    assert conf.get_host(Bucket=BUCKET) == VHOST


def test_make_cos_config_endpoint_mode() -> None:
    settings = CosSettings(
        bucket="b-1250000000",
        region="ap-beijing",
        endpoint="https://cos.ap-beijing.myqcloud.com",
        secret_id="i",
        secret_key="k",
        concurrency=7,
        timeout=12.5,
    )
    conf = make_cos_config(settings)
    assert conf._ip is None
    assert conf._scheme == "https"
    assert conf._endpoint == "cos.ap-beijing.myqcloud.com"
    assert conf.uri(bucket="b-1250000000", path="k") == (
        "https://b-1250000000.cos.ap-beijing.myqcloud.com/k"
    )
    assert (conf._pool_connections, conf._pool_maxsize, conf._timeout) == (7, 7, 12.5)
    assert not conf._anonymous
    # No endpoint: the region's public HTTPS endpoint.
    default = make_cos_config(CosSettings(bucket="b-1250000000", region="ap-shanghai"))
    assert default.uri(bucket="b-1250000000", path="k") == (
        "https://b-1250000000.cos.ap-shanghai.myqcloud.com/k"
    )
    assert default._anonymous  # no credentials


@pytest.mark.parametrize(
    "endpoint",
    [
        "cos.ap-beijing.myqcloud.com",
        "ftp://127.0.0.1:21",
        "http://",
        "https:///path",
        "127.0.0.1:9000",
    ],
)
def test_bad_endpoint_is_a_config_error(endpoint: str) -> None:
    settings = CosSettings(bucket=BUCKET, endpoint=endpoint, secret_id="i", secret_key="k")
    with pytest.raises(ConfigError):
        make_cos_config(settings)
    with pytest.raises(ConfigError):
        CosStore(settings)


class Recorder:
    """A plain HTTP server that records request headers and answers every request
    200 with ``body`` (ignoring any Range header, as HTTP allows)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.body = b""
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                recorder.seen.append({k.lower(): v for k, v in self.headers.items()})
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                body = b"" if self.command in ("HEAD", "PUT") else recorder.body
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", f'"{md5_hex(body)}"')
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET = do_PUT = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    thread = threading.Thread(target=rec.httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield rec
    finally:
        rec.httpd.shutdown()
        rec.httpd.server_close()
        thread.join()


async def test_ip_mode_sends_the_bucket_host_and_signs_it(recorder: Recorder) -> None:
    seen = recorder.seen
    store = make_store(recorder.url)
    try:
        await store.head_bucket()
        await store.put("k", b"", {})
    finally:
        store.close()
    assert [h["host"] for h in seen] == [VHOST, VHOST]
    for headers in seen:
        auth = headers["authorization"]
        assert "q-sign-algorithm=sha1" in auth
        assert f"q-ak={SECRET_ID}" in auth
        signed = auth.split("q-header-list=")[1].split("&")[0].split(";")
        assert "host" in signed


async def test_no_credentials_means_anonymous_requests(server: LocalCosServer) -> None:
    store = CosStore(CosSettings(bucket=BUCKET, region=REGION, endpoint=server.url))
    try:
        # The server checks signatures: an unsigned request is refused.
        with pytest.raises(AccessDeniedError):
            await store.put("k", b"x", {})
    finally:
        store.close()


# ---------------------------------------------------------------------------- secrets


SECRET_MARKERS = ("q-signature", "q-sign-algorithm", "q-key-time", "authorization", "sign_key")


async def test_secrets_never_logged(
    server: LocalCosServer,
    scripted: ScriptedFaults,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="cosencfs")
    # The SDK's logger does not propagate (cosencfs silences it): listen to it
    # and to urllib3 directly, so nothing they emit can escape the check.
    extra = [logging.getLogger("qcloud_cos"), logging.getLogger("urllib3")]
    for lg in extra:
        lg.addHandler(caplog.handler)
    wrong_secret = "wrong-secret-4f7a9c"
    store = make_store(server.url, retry=quick_policy(max_attempts=3))
    bad = make_store(server.url, secret_key=wrong_secret)
    errors: list[BaseException] = []
    try:
        await store.put("k", b"data", {"mode": "1"})
        await store.get("k")
        await store.head("k")
        await store.list_objects()
        await store.copy("k", "k2")
        upload_id = await store.create_multipart("mp", {})
        await store.upload_part("mp", upload_id, 1, b"x")
        await store.abort_multipart("mp", upload_id)
        scripted.script = [FaultKind.INTERNAL_ERROR, FaultKind.RESET]  # retried, logged
        await store.get("k")
        scripted.script = [FaultKind.SLOW_DOWN] * 3  # given up: a warning
        with pytest.raises(TransientError) as transient:
            await store.head("k")
        errors.append(transient.value)
        with pytest.raises(NotFoundError) as missing:
            await store.get("missing")
        errors.append(missing.value)
        with pytest.raises(AccessDeniedError) as denied:
            await bad.get("k")
        errors.append(denied.value)
    finally:
        for lg in extra:
            lg.removeHandler(caplog.handler)
        store.close()
        bad.close()
    text = "\n".join(
        f"{r.name} {r.levelname} {r.getMessage()} {r.args!r} {r.exc_text or ''}"
        for r in caplog.records
    )
    # The capture works: the store's own debug lines are there.
    assert "PutObject 'k' ok" in text
    assert "failed after 3 attempts" in text
    for secret in (SECRET_KEY, SECRET_ID, wrong_secret):
        assert secret not in text
    for marker in SECRET_MARKERS:
        assert marker not in text.lower()
    for err in errors:
        for secret in (SECRET_KEY, SECRET_ID, wrong_secret, "q-signature"):
            assert secret not in str(err)
            assert secret not in repr(err)
    assert SECRET_KEY not in repr(store.settings)
    assert SECRET_ID not in repr(store.settings)
