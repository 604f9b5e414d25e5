"""One contract, two stores: CosStore over the local COS server, and MemoryStore.

Every check here runs against both (the ``backend`` fixture), so the store the
fast Filesystem tests use (tests/model/test_fs_model.py) cannot drift from the
one the mounts use: the same answers, the same errors with the same codes and
statuses, the same limits, the same request counters, the same handling of
injected faults and latency.  The last tests are the memory store's own
(determinism for a seed).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import trio

import cosencfs.store.cos as cos_module
import cosencfs.store.memory as memory_module
from cosencfs.errors import (
    InvalidRequestError,
    NoSuchUploadError,
    NotFoundError,
    PreconditionFailedError,
    StoreError,
    TransientError,
)
from cosencfs.faults import FaultKind
from cosencfs.server import LocalCosServer
from cosencfs.store.base import FileRange, ListPage, ObjectStore
from cosencfs.store.counters import CounterSnapshot
from cosencfs.store.memory import MemoryStore
from cosencfs.store.retry import RetryPolicy
from tests.store._store_helpers import FAULT_SEED, MIB, ScriptedFaults, md5_hex, quick_policy
from tests.testlib import make_store, start_server

#: The retry policy of ``testlib.make_store``, given to both stores.
POLICY = RetryPolicy(max_attempts=6, deadline=20.0, base_delay=0.02)


class Backend:
    """A store under test and the knobs of what serves it (server or memory)."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.tmp = tmp
        self.server: LocalCosServer | None = None
        self.memory: MemoryStore | None = None
        self.stores: list[ObjectStore] = []
        self.store = self.open()

    def open(self, retry: RetryPolicy = POLICY) -> ObjectStore:
        """A store of this backend's bucket (all share one server or one memory bucket)."""
        if self.kind == "memory":
            if self.memory is None:
                self.memory = MemoryStore(seed=FAULT_SEED, retry=retry)
            store: ObjectStore = self.memory
            self.memory.retry = retry
        else:
            if self.server is None:
                self.server = start_server(self.tmp / "cos", fault_seed=FAULT_SEED)
            store = make_store(self.server.url, retry=retry)
        self.stores.append(store)
        return store

    def set_faults(self, rate: float, latency_ms: int = 0) -> None:
        if self.server is not None:
            self.server.set_faults(rate, latency_ms)
        if self.memory is not None:
            self.memory.faults.set(rate, latency_ms)

    def script(self, monkeypatch: pytest.MonkeyPatch) -> ScriptedFaults:
        """Faults decided request by request by the test."""
        faults = ScriptedFaults()
        if self.server is not None:
            injector = self.server._faults
        elif self.memory is not None:
            injector = self.memory.faults
        else:
            raise RuntimeError("no store under test")
        monkeypatch.setattr(injector, "pick", faults.pick)
        return faults

    @property
    def module(self) -> ModuleType:
        """Where this store's copy limits live (tests lower them)."""
        return memory_module if self.kind == "memory" else cos_module

    def close(self) -> None:
        for store in self.stores:
            store.close()  # type: ignore[attr-defined]
        if self.server is not None:
            self.server.stop()


@pytest.fixture(params=["cos", "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request.param, tmp_path)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def store(backend: Backend) -> ObjectStore:
    return backend.store


class Spent:
    """Counter difference over a block: ``with Spent(store) as s: ...; s.delta``."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.delta = CounterSnapshot({}, {}, 0, 0, 0)

    def __enter__(self) -> Spent:
        self.before = self.store.counters.snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        self.delta = self.store.counters.snapshot().minus(self.before)


async def pages(it: AsyncIterator[ListPage]) -> list[ListPage]:
    return [page async for page in it]


async def put_all(store: ObjectStore, keys: list[str], body: bytes = b"x") -> None:
    limiter = trio.CapacityLimiter(16)

    async def one(key: str) -> None:
        async with limiter:
            await store.put(key, body, {})

    async with trio.open_nursery() as nursery:
        for key in keys:
            nursery.start_soon(one, key)


# ---------------------------------------------------------------------------- objects


async def test_the_protocol_and_head_bucket(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)
    await store.head_bucket()
    assert store.counters.snapshot().requests == {"HeadBucket": 1}


async def test_put_then_head(store: ObjectStore) -> None:
    data = os.urandom(1000)
    meta = {"mode": "33188", "client-side-encryption-key": "a2V5+/w==", "Mixed-Case": "v a=l"}
    t0 = time.time()
    etag = await store.put("dir/obj", data, meta, content_type="application/x-test")
    info = await store.head("dir/obj")
    assert (info.key, info.size, info.etag, etag) == ("dir/obj", 1000, md5_hex(data), etag)
    assert t0 - 2 <= info.last_modified <= time.time() + 2
    assert info.last_modified == int(info.last_modified)  # an HTTP date: whole seconds
    assert info.content_type == "application/x-test"
    assert info.has_metadata
    assert dict(info.metadata) == {
        "mode": "33188",
        "client-side-encryption-key": "a2V5+/w==",
        "mixed-case": "v a=l",
    }
    assert dict(info.headers) == {}
    await store.put("plain", b"", {})
    info = await store.head("plain")
    assert (info.size, info.etag, info.content_type) == (
        0,
        md5_hex(b""),
        "application/octet-stream",
    )
    assert await store.get("plain") == b""


async def test_get_ranges_and_their_bytes(store: ObjectStore) -> None:
    size = 100_003
    data = os.urandom(size)
    await store.put("r", data, {})
    ranges = [(0, 1), (15, 33), (17, 4113), (size - 1, size), (12_345, size + 1000), (7, None)]
    with Spent(store) as spent:
        assert await store.get("r") == data
        for start, end in ranges:
            assert await store.get("r", start, end) == data[start:end], (start, end)
        # Empty ranges ask nothing, even of a key that does not exist.
        assert await store.get("r", 5, 5) == await store.get("none", 7, 3) == b""
    assert spent.delta.requests == {"GetObject": len(ranges) + 1}
    assert spent.delta.bytes_down == size + sum(len(data[s:e]) for s, e in ranges)
    assert (spent.delta.bytes_up, spent.delta.failures) == (0, {})


@pytest.mark.parametrize(("start", "end"), [(10, 20), (5000, None), (0, 1)])
async def test_range_past_the_end_is_416(store: ObjectStore, start: int, end: int | None) -> None:
    await store.put("r", b"0123456789", {})
    await store.put("empty", b"", {})
    key = "empty" if (start, end) == (0, 1) else "r"
    with pytest.raises(InvalidRequestError) as exc:
        await store.get(key, start, end)
    assert (exc.value.status, exc.value.code, exc.value.key) == (416, "InvalidRange", key)


async def test_get_if_match(store: ObjectStore) -> None:
    data = os.urandom(5000)
    etag = await store.put("m", data, {})
    assert await store.get("m", 100, 200, if_match=etag) == data[100:200]
    with Spent(store) as spent, pytest.raises(PreconditionFailedError) as exc:
        await store.get("m", if_match="0" * 32)
    assert (exc.value.status, exc.value.key, exc.value.op) == (412, "m", "GetObject")
    assert (spent.delta.requests, spent.delta.retries) == ({"GetObject": 1}, 0)
    await store.put("m", b"new", {})
    with pytest.raises(PreconditionFailedError):
        await store.get("m", 0, 2, if_match=etag)


@pytest.mark.parametrize("kind", ["bytearray", "memoryview", "file range"])
async def test_bodies(store: ObjectStore, tmp_path: Path, kind: str) -> None:
    raw = os.urandom(70_001)
    path = tmp_path / "cache-file"
    path.write_bytes(raw)
    bodies: dict[str, tuple[bytearray | memoryview | FileRange, bytes]] = {
        "bytearray": (bytearray(raw), raw),
        "memoryview": (memoryview(bytearray(raw))[33:], raw[33:]),
        "file range": (FileRange(str(path), 100, 5000), raw[100:5100]),
    }
    body, expected = bodies[kind]
    with Spent(store) as spent:
        assert await store.put("b", body, {"k": "v"}) == md5_hex(expected)
    assert await store.get("b") == expected
    assert spent.delta.bytes_up == len(expected)


async def test_file_range_is_read_when_sent(store: ObjectStore, tmp_path: Path) -> None:
    path = tmp_path / "cache-file"
    path.write_bytes(b"A" * 3000)
    body = FileRange(str(path), 1000, 1000)
    await store.put("k", body, {})
    upload_id = await store.create_multipart("mp", {})
    path.write_bytes(b"B" * 3000)  # rewritten after the body was described
    await store.upload_part("mp", upload_id, 1, body)
    assert await store.get("k") == b"A" * 1000
    assert [p.etag for p in await store.list_parts("mp", upload_id)] == [md5_hex(b"B" * 1000)]
    path.write_bytes(b"short")
    with pytest.raises((OSError, StoreError)):
        await store.put("short", body, {})
    with pytest.raises(NotFoundError):
        await store.head("short")


async def test_put_if_none_match(store: ObjectStore) -> None:
    await store.put("once", b"first", {}, if_none_match=True)
    with Spent(store) as spent, pytest.raises(PreconditionFailedError) as exc:
        await store.put("once", b"second", {}, if_none_match=True)
    assert exc.value.status == 412
    assert (spent.delta.requests, spent.delta.retries) == ({"PutObject": 1}, 0)
    assert await store.get("once") == b"first"
    await store.put("once", b"second", {})
    assert await store.get("once") == b"second"


# ---------------------------------------------------------------------------- listings


async def test_prefix_delimiter_marker_and_max_keys(store: ObjectStore) -> None:
    keys = ["d/a/1", "d/a/2", "d/b/1", "d/c", "d/d/1", "d/e", "dz", "e"]
    for i, key in enumerate(keys):
        await store.put(key, os.urandom(10 + i), {"mode": "1"})
    page = await store.list_objects(prefix="d/")
    assert [o.key for o in page.objects] == keys[:6]
    assert (list(page.common_prefixes), page.truncated, page.next_marker) == ([], False, "")
    assert all(o.size == 10 + keys.index(o.key) and not o.has_metadata for o in page.objects)
    assert all(dict(o.metadata) == {} and o.content_type == "" for o in page.objects)
    page = await store.list_objects(prefix="d/", delimiter="/")
    assert [o.key for o in page.objects] == ["d/c", "d/e"]
    assert list(page.common_prefixes) == ["d/a/", "d/b/", "d/d/"]
    top = await store.list_objects(delimiter="/")
    assert ([o.key for o in top.objects], list(top.common_prefixes)) == (["dz", "e"], ["d/"])
    page = await store.list_objects(prefix="d/", max_keys=2)
    assert [o.key for o in page.objects] == ["d/a/1", "d/a/2"]
    assert (page.truncated, page.next_marker) == (True, "d/a/2")
    page = await store.list_objects(prefix="d/", marker="d/b/1")
    assert [o.key for o in page.objects] == ["d/c", "d/d/1", "d/e"]
    page = await store.list_objects(prefix="d/", max_keys=0)
    assert [o.key for o in page.objects] == ["d/a/1"]
    assert page.truncated
    # Pages of two with a delimiter: every entry once, markers after prefixes.
    seen: list[str] = []
    marker = ""
    while True:
        page = await store.list_objects(prefix="d/", delimiter="/", marker=marker, max_keys=2)
        seen += [o.key for o in page.objects] + list(page.common_prefixes)
        if not page.truncated:
            break
        marker = page.next_marker
    assert seen == ["d/a/", "d/b/", "d/c", "d/d/", "d/e"]
    got = await pages(store.list_all(prefix="d/", delimiter="/"))
    assert [[o.key for o in p.objects] for p in got] == [["d/c", "d/e"]]
    assert await store.list_objects(prefix="nothing/") == ListPage([], [], "", False)


async def test_awkward_names_sort_and_round_trip(store: ObjectStore) -> None:
    keys = ["n/a b", "n/a+b", "n/a/", "n/a/x", "n/100%", "n/ü€😀", "n/tab\tx", "n/amp&<>'\""]
    for key in keys:
        await store.put(key, b"x", {})
    page = await store.list_objects(prefix="n/")
    assert [o.key for o in page.objects] == sorted(keys)  # code points = UTF-8 byte order
    page = await store.list_objects(prefix="n/", delimiter="/", marker="n/a b")
    assert [o.key for o in page.objects] == ["n/a+b", "n/amp&<>'\"", "n/tab\tx", "n/ü€😀"]
    assert list(page.common_prefixes) == ["n/a/"]
    page = await store.list_objects(prefix="n/a/", marker="n/a/")
    assert [o.key for o in page.objects] == ["n/a/x"]


async def test_thousand_key_pages_and_batched_deletes(store: ObjectStore) -> None:
    keys = [f"many/{i:05d}" for i in range(1105)]
    await put_all(store, keys)
    await store.put("other", b"y", {})
    page = await store.list_objects(prefix="many/", max_keys=5000)
    assert len(page.objects) == 1000
    assert page.truncated
    with Spent(store) as spent:
        got = await pages(store.list_all(prefix="many/"))
    assert [len(p.objects) for p in got] == [1000, 105]
    assert [o.key for p in got for o in p.objects] == keys
    assert spent.delta.requests == {"ListObjects": 2}
    folded = await pages(store.list_all(delimiter="/"))
    assert [(o.key, c) for p in folded for o in p.objects for c in p.common_prefixes] == [
        ("other", "many/")
    ]
    with Spent(store) as spent:
        assert await store.delete_many([*keys, "many/not-there"]) == {}
        assert await store.delete_many([]) == {}
    assert spent.delta.requests == {"DeleteMultipleObjects": 2}
    assert await pages(store.list_all(prefix="many/")) == [ListPage([], [], "", False)]


async def test_delete(store: ObjectStore) -> None:
    await store.put("gone", b"x", {})
    await store.delete("gone")
    with pytest.raises(NotFoundError):
        await store.head("gone")
    with Spent(store) as spent:
        await store.delete("gone")
        await store.delete("never-was")
    assert (spent.delta.requests, spent.delta.failures) == ({"DeleteObject": 2}, {})
    assert spent.delta.retries == 0


# ---------------------------------------------------------------------------- copies


async def test_copy_keeps_or_replaces_metadata(store: ObjectStore) -> None:
    data = os.urandom(10_000)
    meta = {"mode": "33188", "client-side-encryption-key": "S0VZ"}
    src = await store.put("src", data, meta, content_type="text/x-src")
    with Spent(store) as spent:
        assert await store.copy("src", "kept") == src  # a copy keeps the ETag
    assert spent.delta.requests == {"HeadObject": 1, "CopyObject": 1}
    info = await store.head("kept")
    assert (dict(info.metadata), info.content_type, info.etag) == (meta, "text/x-src", src)
    new_meta = {"mode": "33261"}
    headers = {"Cache-Control": "no-cache", "X-Other": "dropped"}
    with Spent(store) as spent:
        await store.copy(
            "src",
            "repl",
            metadata=new_meta,
            content_type="text/x-new",
            headers=headers,
            size=10_000,
        )
    assert spent.delta.requests == {"CopyObject": 1}  # a known size saves the HEAD
    info = await store.head("repl")
    assert (dict(info.metadata), info.content_type) == (new_meta, "text/x-new")
    assert dict(info.headers) == {"cache-control": "no-cache"}
    assert await store.get("repl") == data
    await store.copy("repl", "repl2")  # standard headers travel with a Copy directive
    assert dict((await store.head("repl2")).headers) == {"cache-control": "no-cache"}
    await store.copy("src", "src", metadata={"mode": "1"}, size=10_000)
    info = await store.head("src")
    assert (dict(info.metadata), info.content_type) == ({"mode": "1"}, "application/octet-stream")
    assert await store.get("src") == data


@pytest.mark.parametrize("size_known", [False, True])
async def test_copy_if_match_and_missing_source(store: ObjectStore, size_known: bool) -> None:
    data = os.urandom(3000)
    etag = await store.put("src", data, {"a": "1"})
    size = len(data) if size_known else None
    with pytest.raises(PreconditionFailedError):
        await store.copy("src", "dst", if_match="f" * 32, size=size)
    with pytest.raises(NotFoundError):
        await store.head("dst")
    await store.copy("src", "dst", if_match=etag, size=size)
    assert await store.get("dst") == data
    with pytest.raises(NotFoundError) as exc:
        await store.copy("nope", "dst2", size=size)
    assert not isinstance(exc.value, NoSuchUploadError)
    with pytest.raises(NotFoundError):
        await store.head("dst2")


@pytest.mark.parametrize("replace", [False, True], ids=["copy", "replaced"])
async def test_large_copy_is_made_of_part_copies(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, replace: bool
) -> None:
    store = backend.store
    data = os.urandom(5 * MIB + 123)
    meta = {"mode": "33188"}
    await store.put("big", data, meta, content_type="text/x-big")
    monkeypatch.setattr(backend.module, "MAX_PUT_BYTES", 3 * MIB)
    monkeypatch.setattr(backend.module, "COPY_PART_BYTES", 1 * MIB)
    with Spent(store) as spent:
        etag = await store.copy(
            "big",
            "copy",
            metadata={"mode": "1"} if replace else None,
            content_type="text/x-new" if replace else "",
            size=len(data),
        )
    assert spent.delta.requests == {
        "HeadObject": 1,
        "InitiateMultipartUpload": 1,
        "UploadPartCopy": 6,
        "CompleteMultipartUpload": 1,
    }
    info = await store.head("copy")
    assert etag == info.etag
    assert etag.endswith("-6")
    assert info.size == len(data)
    assert dict(info.metadata) == ({"mode": "1"} if replace else meta)
    assert info.content_type == ("text/x-new" if replace else "text/x-big")
    assert await store.get("copy") == data
    with pytest.raises(PreconditionFailedError):
        await store.copy("big", "copy2", if_match="0" * 32)
    assert await store.list_uploads() == []


# ---------------------------------------------------------------------------- multipart


async def test_multipart_lifecycle(store: ObjectStore, tmp_path: Path) -> None:
    meta = {"mode": "33188", "client-side-encryption-iv": "SVY="}
    upload_id = await store.create_multipart(
        "mp/obj", meta, content_type="text/x-mp", headers={"Content-Disposition": "inline"}
    )
    uploads = await store.list_uploads(prefix="mp/")
    assert [(u.key, u.upload_id) for u in uploads] == [("mp/obj", upload_id)]
    assert time.time() - 5 <= uploads[0].initiated <= time.time() + 2
    assert await store.list_uploads(prefix="other/") == []
    p1, p3 = os.urandom(MIB + 16), os.urandom(1001)
    path = tmp_path / "part"
    path.write_bytes(os.urandom(3 * MIB))
    p2 = path.read_bytes()[MIB : 2 * MIB + 32]
    etags: dict[int, str] = {}

    async def up(n: int, body: bytes | FileRange) -> None:
        etags[n] = await store.upload_part("mp/obj", upload_id, n, body)

    with Spent(store) as spent:
        async with trio.open_nursery() as nursery:  # in parallel, in any order
            nursery.start_soon(up, 3, p3)
            nursery.start_soon(up, 1, p1)
            nursery.start_soon(up, 2, FileRange(str(path), MIB, len(p2)))
    assert spent.delta.requests == {"UploadPart": 3}
    assert spent.delta.bytes_up == len(p1) + len(p2) + len(p3)
    assert etags == {1: md5_hex(p1), 2: md5_hex(p2), 3: md5_hex(p3)}
    parts = await store.list_parts("mp/obj", upload_id)
    assert [(p.part_number, p.etag, p.size) for p in parts] == [
        (n, md5_hex(b), len(b)) for n, b in ((1, p1), (2, p2), (3, p3))
    ]
    etag = await store.complete_multipart("mp/obj", upload_id, sorted(etags.items()))
    digests = b"".join(hashlib.md5(p).digest() for p in (p1, p2, p3))
    assert etag == hashlib.md5(digests).hexdigest() + "-3"
    info = await store.head("mp/obj")
    assert (info.etag, info.size, dict(info.metadata)) == (etag, len(p1 + p2 + p3), meta)
    assert (info.content_type, dict(info.headers)) == (
        "text/x-mp",
        {"content-disposition": "inline"},
    )
    assert await store.get("mp/obj") == p1 + p2 + p3
    assert await store.list_uploads() == []
    # A complete repeated after its answer was lost finds the object ...
    assert await store.complete_multipart("mp/obj", upload_id, sorted(etags.items())) == etag
    # ... and another part count is not taken for it.
    with pytest.raises(NoSuchUploadError):
        await store.complete_multipart("mp/obj", upload_id, [(1, etags[1])])


async def test_part_copy(store: ObjectStore) -> None:
    data = os.urandom(3 * MIB)
    etag = await store.put("src", data, {})
    upload_id = await store.create_multipart("dst", {})
    a = await store.upload_part_copy("dst", upload_id, 1, "src", 0, 2 * MIB, if_match=etag)
    b = await store.upload_part_copy("dst", upload_id, 2, "src", 2 * MIB, 3 * MIB)
    assert (a, b) == (md5_hex(data[: 2 * MIB]), md5_hex(data[2 * MIB :]))
    with pytest.raises(PreconditionFailedError):
        await store.upload_part_copy("dst", upload_id, 3, "src", 0, 10, if_match="0" * 32)
    with pytest.raises(InvalidRequestError):
        await store.upload_part_copy("dst", upload_id, 3, "src", 3 * MIB - 1, 3 * MIB + 1)
    with pytest.raises(NotFoundError):
        await store.upload_part_copy("dst", upload_id, 3, "nope", 0, 10)
    await store.complete_multipart("dst", upload_id, [(1, a), (2, b)])
    assert await store.get("dst") == data


async def test_abort_and_unknown_uploads(store: ObjectStore) -> None:
    keep = await store.create_multipart("keep", {})
    upload_id = await store.create_multipart("gone", {"a": "1"})
    await store.upload_part("gone", upload_id, 1, b"part")
    await store.abort_multipart("gone", upload_id)
    assert [u.upload_id for u in await store.list_uploads()] == [keep]
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.upload_part("gone", upload_id, 2, b"more"),
        lambda: store.list_parts("gone", upload_id),
        lambda: store.complete_multipart("gone", upload_id, [(1, md5_hex(b"part"))]),
        lambda: store.upload_part("keep", upload_id, 1, b"x"),  # another key's upload
    ]
    for call in calls:
        with pytest.raises(NotFoundError) as exc:
            await call()
        assert exc.value.status == 404
    await store.abort_multipart("gone", upload_id)  # again: fine
    await store.abort_multipart("keep", keep)
    assert await store.list_uploads() == []


async def test_complete_checks_the_part_list(store: ObjectStore) -> None:
    upload_id = await store.create_multipart("mp", {})
    small = await store.upload_part("mp", upload_id, 1, b"small")
    big = await store.upload_part("mp", upload_id, 2, os.urandom(MIB))
    last = await store.upload_part("mp", upload_id, 3, b"last")
    cases = {
        "EntityTooSmall": [(1, small), (2, big)],
        "InvalidPartOrder": [(2, big), (2, big)],
        "InvalidPart": [(2, "0" * 32)],
    }
    for code, parts in cases.items():
        with pytest.raises(InvalidRequestError) as exc:
            await store.complete_multipart("mp", upload_id, parts)
        assert (exc.value.code, exc.value.status) == (code, 400), parts
    for number in (0, 10_001):
        with pytest.raises(InvalidRequestError):
            await store.upload_part("mp", upload_id, number, b"x")
    await store.complete_multipart("mp", upload_id, [(2, big), (3, last)])
    assert (await store.head("mp")).size == MIB + 4


async def test_parts_and_uploads_list_in_pages(store: ObjectStore) -> None:
    upload_id = await store.create_multipart("many-parts", {})
    limiter = trio.CapacityLimiter(16)

    async def part(n: int) -> None:
        async with limiter:
            await store.upload_part("many-parts", upload_id, n, n.to_bytes(2, "big"))

    async def initiate(i: int) -> None:
        async with limiter:
            await store.create_multipart(f"up/{i:04d}", {})

    async with trio.open_nursery() as nursery:
        for n in range(1, 1004):
            nursery.start_soon(part, n)
        for i in range(1003):
            nursery.start_soon(initiate, i)
    with Spent(store) as spent:
        parts = await store.list_parts("many-parts", upload_id)
        uploads = await store.list_uploads(prefix="up/")
    assert [p.part_number for p in parts] == list(range(1, 1004))
    assert all(p.size == 2 and p.etag == md5_hex(p.part_number.to_bytes(2, "big")) for p in parts)
    assert sorted(u.key for u in uploads) == [f"up/{i:04d}" for i in range(1003)]
    assert len({u.upload_id for u in uploads}) == 1003
    assert spent.delta.requests == {"ListParts": 2, "ListMultipartUploads": 2}


# ---------------------------------------------------------------------------- limits, errors


async def test_key_length_limit(store: ObjectStore) -> None:
    fits = "k/" + "é" * 424  # 850 bytes of UTF-8
    assert len(fits.encode()) == 850
    await store.put(fits, b"x", {})
    assert (await store.head(fits)).size == 1
    too_long = fits + "x"
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.put(too_long, b"x", {}),
        lambda: store.head(too_long),
        lambda: store.get(too_long),
        lambda: store.delete(too_long),
        lambda: store.copy(fits, too_long, size=1),
        lambda: store.create_multipart(too_long, {}),
    ]
    for call in calls:
        with pytest.raises(InvalidRequestError) as exc:
            await call()
        assert (exc.value.code, exc.value.status) == ("KeyTooLong", 400)
    failures = await store.delete_many([too_long, fits])
    assert [(k, f.code) for k, f in failures.items()] == [(too_long, "KeyTooLong")]
    with pytest.raises(NotFoundError):
        await store.head(fits)


async def test_metadata_limits(store: ObjectStore) -> None:
    # 2 KB in all: each entry counts its x-cos-meta- name and its value's bytes.
    await store.put("fits", b"x", {"m": "v" * (2048 - 12)})
    await store.put("fits-utf8", b"x", {"m": "é" * 1000})
    for key, meta, code in [
        ("big", {"m": "v" * (2048 - 11)}, "MetadataTooLarge"),
        ("big-utf8", {"m": "é" * 1020}, "MetadataTooLarge"),
        ("control", {"m": "a\x01b"}, "InvalidArgument"),
    ]:
        with pytest.raises(InvalidRequestError) as exc:
            await store.put(key, b"x", meta)
        assert exc.value.code == code
        with pytest.raises(InvalidRequestError):
            await store.create_multipart(key, meta)
        with pytest.raises(InvalidRequestError):
            await store.copy("fits", key, metadata=meta, size=1)
    await store.put("tab", b"x", {"m": "a\tb"})  # a tab is fine in a header
    assert dict((await store.head("tab")).metadata) == {"m": "a\tb"}


async def test_missing_key_errors_name_the_request(store: ObjectStore) -> None:
    with Spent(store) as spent:
        with pytest.raises(NotFoundError) as exc:
            await store.head("nope/key")
        assert (exc.value.status, exc.value.key, exc.value.op) == (404, "nope/key", "HeadObject")
        for start, end in ((0, None), (10, 20)):
            with pytest.raises(NotFoundError) as exc:
                await store.get("nope/key", start, end)
            assert (exc.value.code, exc.value.op) == ("NoSuchKey", "GetObject")
    assert not isinstance(exc.value, NoSuchUploadError)
    assert spent.delta.requests == spent.delta.failures == {"HeadObject": 1, "GetObject": 2}
    assert spent.delta.retries == 0


async def test_counters_of_a_workload(store: ObjectStore) -> None:
    bodies = [os.urandom(n) for n in (0, 1, 1000, 65_537)]
    for i, body in enumerate(bodies):
        await store.put(f"c/{i}", body, {"i": str(i)})
        await store.get(f"c/{i}")
    await store.get("c/2", 1, 100)
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
    snap = store.counters.snapshot()
    assert snap.requests == {
        "PutObject": 4,
        "GetObject": 5,
        "HeadObject": 3,
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
    assert (snap.failures, snap.retries) == ({"HeadObject": 1}, 0)
    assert snap.bytes_up == sum(map(len, bodies)) + 4
    assert snap.bytes_down == sum(map(len, bodies)) + 99


# ---------------------------------------------------------------------------- faults, latency


async def test_everything_succeeds_despite_half_the_requests_failing(
    backend: Backend, tmp_path: Path
) -> None:
    store = backend.open(retry=quick_policy())
    backend.set_faults(0.5)
    path = tmp_path / "src"
    path.write_bytes(os.urandom(MIB))
    bodies = {f"f/{i:02d}": os.urandom(1000 * i + 7) for i in range(12)}
    for key, body in bodies.items():
        assert await store.put(key, body, {"n": key}) == md5_hex(body)
    await store.put("g", FileRange(str(path), 10, 300_000), {})
    for key, body in bodies.items():
        assert await store.get(key, 3, 1003) == body[3:1003]
        assert dict((await store.head(key)).metadata) == {"n": key}
    assert [o.key for p in await pages(store.list_all(prefix="f/")) for o in p.objects] == sorted(
        bodies
    )
    for i in range(6):  # copies can also be answered 200 with an <Error> body
        await store.copy(f"f/{i:02d}", f"c/{i}", metadata={"c": "y"} if i % 2 else None)
        assert await store.get(f"c/{i}") == bodies[f"f/{i:02d}"]
    upload_id = await store.create_multipart("mp", {})
    parts = [(1, await store.upload_part("mp", upload_id, 1, FileRange(str(path), 0, MIB)))]
    assert [p.part_number for p in await store.list_parts("mp", upload_id)] == [1]
    await store.complete_multipart("mp", upload_id, parts)
    assert await store.get("mp") == path.read_bytes()
    assert await store.delete_many(sorted(bodies)) == {}
    snap = store.counters.snapshot()
    failed = sum(snap.failures.values())
    assert failed > 10, snap.as_dict()
    assert snap.retries == failed  # every failure was followed by another attempt
    if backend.server is not None:
        assert snap.requests == backend.server.stats()


@pytest.mark.parametrize("op", ["head", "get", "put", "list", "copy", "upload_part"])
async def test_gives_up_after_max_attempts(backend: Backend, op: str) -> None:
    store = backend.open(retry=quick_policy(max_attempts=3, deadline=10))
    await store.put("k", b"data", {})
    upload_id = await store.create_multipart("mp", {})
    calls: dict[str, tuple[str, Callable[[], Awaitable[object]]]] = {
        "head": ("HeadObject", lambda: store.head("k")),
        "get": ("GetObject", lambda: store.get("k")),
        "put": ("PutObject", lambda: store.put("k", b"new", {})),
        "list": ("ListObjects", store.list_objects),
        "copy": ("CopyObject", lambda: store.copy("k", "k2", size=4)),
        "upload_part": ("UploadPart", lambda: store.upload_part("mp", upload_id, 1, b"p")),
    }
    name, call = calls[op]
    backend.set_faults(1.0)
    with Spent(store) as spent, trio.fail_after(10), pytest.raises(TransientError) as exc:
        await call()
    assert exc.value.op == name
    assert (spent.delta.requests, spent.delta.failures) == ({name: 3}, {name: 3})
    assert spent.delta.retries == 2
    backend.set_faults(0.0)
    assert await store.get("k") == b"data"


async def test_latency_delays_every_request(backend: Backend) -> None:
    store = backend.store
    backend.set_faults(0.0, latency_ms=150)
    t0 = time.monotonic()
    await store.put("slow", b"abc", {})
    assert await store.get("slow") == b"abc"
    assert (await store.head("slow")).size == 3
    assert time.monotonic() - t0 >= 0.45
    assert store.counters.snapshot().failures == {}


@pytest.mark.parametrize("op", ["copy", "complete"])
async def test_an_error_answered_with_200_is_retried(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, op: str
) -> None:
    store = backend.store
    await store.put("src", b"data", {"a": "1"})
    upload_id = await store.create_multipart("mp", {})
    etag = await store.upload_part("mp", upload_id, 1, b"only part")
    scripted = backend.script(monkeypatch)
    if op == "copy":
        scripted.copy_script = [FaultKind.ERROR_200]
        with Spent(store) as spent:
            await store.copy("src", "dst", size=4)
        assert dict((await store.head("dst")).metadata) == {"a": "1"}
        name = "CopyObject"
    else:
        scripted.script = [FaultKind.ERROR_200]
        with Spent(store) as spent:
            assert (await store.complete_multipart("mp", upload_id, [(1, etag)])).endswith("-1")
        assert await store.get("mp") == b"only part"
        name = "CompleteMultipartUpload"
    assert scripted.injected == [FaultKind.ERROR_200]
    assert (spent.delta.requests, spent.delta.failures) == ({name: 2}, {name: 1})


async def test_an_error_answered_with_200_is_not_success(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = backend.open(retry=quick_policy(max_attempts=1))
    await store.put("src", b"data", {})
    backend.script(monkeypatch).copy_script = [FaultKind.ERROR_200]
    with pytest.raises(TransientError) as exc:
        await store.copy("src", "dst", size=4)
    assert (exc.value.status, exc.value.code) == (200, "InternalError")
    with pytest.raises(NotFoundError):
        await store.head("dst")


# ---------------------------------------------------------------------------- MemoryStore only


async def test_same_seed_same_faults() -> None:
    async def workload(store: MemoryStore) -> dict[str, object]:
        for i in range(40):
            await store.put(f"k{i}", bytes([i]) * 10, {})
            assert await store.get(f"k{i}") == bytes([i]) * 10
        return store.counters.snapshot().as_dict()

    policy = quick_policy()
    runs = [await workload(MemoryStore(fault_rate=0.3, seed=s, retry=policy)) for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert runs[0]["retries"]


async def test_deadline_bounds_latency() -> None:
    store = MemoryStore(latency_ms=2000, retry=RetryPolicy(max_attempts=5, deadline=0.3))
    with trio.fail_after(5), pytest.raises(TransientError) as exc:
        await store.head("k")
    assert exc.value.op == "HeadObject"
    assert store.counters.snapshot().requests == {"HeadObject": 1}
