"""The operations (``cosencfs.store.cosops``) and the paths that carry them (``paths``).

Each operation is described once; the SDK path (``fast_path=False``), the
http.client path and the event loop must make the same requests of it and
map the answers alike, request for request.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qcloud_cos.cos_comm import mapped

import cosencfs.store.paths as paths_module
from cosencfs.errors import NoSuchBucketError, NotFoundError, PreconditionFailedError
from cosencfs.server import LocalCosServer
from cosencfs.store import cosops
from cosencfs.store.asynchttp import SMALL_BODY
from cosencfs.store.base import FileRange
from cosencfs.store.cos import CosStore
from cosencfs.store.cosops import HttpExchange
from cosencfs.store.fasthttp import Answer
from tests.store._store_helpers import MIB
from tests.testlib import make_store


@pytest.fixture
def sdk_store(store: CosStore) -> Iterator[CosStore]:
    """The ``store`` fixture's bucket, every request through ``CosS3Client``."""
    sdk = CosStore(dataclasses.replace(store.settings, fast_path=False))
    try:
        yield sdk
    finally:
        sdk.close()


async def _scenario(store: CosStore, p: str, tmp_path: Path) -> list[Any]:
    """Every operation with an HTTP description, the answers it gave, and what it cost."""
    out: list[Any] = []
    data = bytes(range(256)) * 4
    etag = await store.put(p + "a", data, {"mode": "33188", "Name": "x"}, content_type="text/x")
    info = await store.head(p + "a")
    out += [etag, info.size, info.etag, info.metadata, info.content_type]
    out.append(await store.get(p + "a") == data)
    out.append(await store.get(p + "a", 16, 48) == data[16:48])
    out.append(await store.get(p + "a", 1000) == data[1000:])
    out.append(await store.get(p + "a", 0, 16, if_match=etag) == data[:16])
    with pytest.raises(PreconditionFailedError):
        await store.get(p + "a", 0, 16, if_match="0" * 32)
    with pytest.raises(PreconditionFailedError):
        await store.put(p + "a", b"again", {}, if_none_match=True)
    for missing in (store.head(p + "missing"), store.get(p + "missing")):
        with pytest.raises(NotFoundError):
            await missing
    page = await store.list_objects(prefix=p, delimiter="/")
    out.append(([o.key[len(p) :] for o in page.objects], page.common_prefixes, page.truncated))
    part = bytes(range(256)) * (MIB // 256)  # the same on both paths: same ETags
    path = tmp_path / f"part-{p.strip('/')}"
    path.write_bytes(part)
    upload_id = await store.create_multipart(p + "mp", {"m": "1"})
    out.append(await store.upload_part(p + "mp", upload_id, 1, FileRange(str(path), 0, MIB)))
    out.append(await store.upload_part(p + "mp", upload_id, 2, b"tail"))
    parts = await store.list_parts(p + "mp", upload_id)
    out.append(await store.complete_multipart(p + "mp", upload_id, [(1, out[-2]), (2, out[-1])]))
    out.append([(x.part_number, x.size) for x in parts])
    out.append(await store.get(p + "mp") == part + b"tail")
    await store.delete(p + "a")
    await store.delete(p + "a")  # missing: still fine
    spent = store.counters.snapshot()
    out += [spent.requests, spent.failures, spent.retries, spent.bytes_up, spent.bytes_down]
    return out


async def test_the_sdk_path_answers_like_the_fast_paths(
    store: CosStore, sdk_store: CosStore, server: LocalCosServer, tmp_path: Path
) -> None:
    assert store._paths.fast is not None
    assert store._paths.aio is not None
    assert sdk_store._paths.fast is None
    assert sdk_store._paths.aio is None
    server.reset_stats()
    fast = await _scenario(store, "fast/", tmp_path)
    fast_server = server.stats()
    server.reset_stats()
    sdk = await _scenario(sdk_store, "sdk/", tmp_path)
    assert sdk == fast
    assert server.stats() == fast_server


async def test_small_requests_take_the_event_loop(
    store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = store._paths
    assert paths.fast is not None
    assert paths.aio is not None
    in_loop: list[str] = []
    in_thread: list[str] = []
    aio_request, fast_request = paths.aio.request, paths.fast.request

    async def loop_request(method: str, key: str, **kw: Any) -> Answer:
        in_loop.append(method)
        return await aio_request(method, key, **kw)

    def thread_request(method: str, key: str, **kw: Any) -> Answer:
        in_thread.append(method)
        return fast_request(method, key, **kw)

    monkeypatch.setattr(paths.aio, "request", loop_request)
    monkeypatch.setattr(paths.fast, "request", thread_request)
    await store.put("k", b"small", {})
    await store.head("k")
    await store.get("k", 0, 5)
    assert (in_loop, in_thread) == (["PUT", "HEAD", "GET"], [])
    in_loop.clear()
    await store.get("k")  # no end: size unknown
    await store.get("k", 0, SMALL_BODY + 1)
    await store.put("big", os.urandom(SMALL_BODY + 1), {})
    upload_id = await store.create_multipart("mp", {})  # SDK: neither list
    await store.upload_part("mp", upload_id, 1, b"small part")
    await store.list_objects()
    await store.delete("k")
    assert in_loop == []
    assert in_thread == ["GET", "GET", "PUT", "PUT", "GET", "DELETE"]


async def test_a_short_sdk_body_is_counted_and_retried(
    sdk_store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(5000)
    await sdk_store.put("k", data, {})
    real = paths_module.sdk_exchange
    cut: list[int] = []

    def short_once(client: Any, bucket: str, http: HttpExchange[Any], body: Any) -> Answer:
        answer = real(client, bucket, http, body)
        if http.method == "GET" and not cut:
            cut.append(len(answer.body) - 1)
            return Answer(answer.status, answer.headers, answer.body[:-1])
        return answer

    monkeypatch.setattr(paths_module, "sdk_exchange", short_once)
    before = sdk_store.counters.snapshot()
    assert await sdk_store.get("k") == data
    spent = sdk_store.counters.snapshot().minus(before)
    assert spent.requests == {"GetObject": 2}
    assert spent.failures == {"GetObject": 1}
    assert spent.retries == 1
    # The short body's bytes were received, so they count.
    assert spent.bytes_down == cut[0] + len(data)


def test_sdk_arguments_make_the_sdk_send_the_same_headers() -> None:
    for op in (
        cosops.put_object("k", b"x", {"Mode": "1", "uid": "0"}, "text/plain", True),
        cosops.get_object("k", 16, 32, "etag"),
        cosops.get_object("k", 0, None, None),
        cosops.head_object("k"),
    ):
        assert op.http is not None
        headers = dict(op.http.headers)
        assert mapped(paths_module.sdk_arguments(headers)) == headers
    with pytest.raises(ValueError, match="X-Unknown"):
        paths_module.sdk_arguments({"X-Unknown": "1"})


def test_operations_describe_their_requests() -> None:
    get = cosops.get_object("k", 16, 32, "e")
    assert get.http is not None
    assert (get.name, get.http.method, get.http.key) == ("GetObject", "GET", "k")
    assert dict(get.http.headers) == {"Range": "bytes=16-31", "If-Match": '"e"'}
    assert get.small
    assert get.counts_down
    assert get.up == 0
    whole = cosops.get_object("k", 0, None, None)
    assert whole.http is not None
    assert dict(whole.http.headers) == {}
    assert not whole.small
    tail = cosops.get_object("k", 10, None, None)
    assert tail.http is not None
    assert dict(tail.http.headers) == {"Range": "bytes=10-"}
    assert not cosops.get_object("k", 0, SMALL_BODY + 1, None).small
    put = cosops.put_object("k", FileRange("/nowhere", 0, SMALL_BODY), {}, "", False)
    assert (put.up, put.small) == (SMALL_BODY, True)
    big = cosops.put_object("k", FileRange("/nowhere", 0, SMALL_BODY + 1), {}, "", False)
    assert not big.small
    part = cosops.upload_part("k", "id", 3, b"tiny")
    assert part.http is not None
    assert dict(part.http.params) == {"partNumber": 3, "uploadId": "id"}
    assert (part.up, part.small) == (4, False)
    listing = cosops.list_objects("p/", "/", "m", 10)
    assert listing.http is not None
    assert listing.http.key == ""
    assert listing.sdk is not None
    assert listing.http.params["encoding-type"] == "url"
    assert cosops.head_bucket().http is None
    with pytest.raises(ValueError, match="needs a request"):
        cosops.Operation("Nothing", "k")


async def test_head_bucket_and_sdk_only_operations_on_both_paths(
    store: CosStore, sdk_store: CosStore
) -> None:
    for s in (store, sdk_store):
        await s.head_bucket()
        await s.put(f"{id(s)}/src", b"body", {"a": "1"})
        await s.copy(f"{id(s)}/src", f"{id(s)}/dst")
        assert await s.get(f"{id(s)}/dst") == b"body"
        assert await s.delete_many([f"{id(s)}/src", f"{id(s)}/dst"]) == {}
    missing = make_store(store.settings.endpoint or "", bucket="no-such-1250000000")
    try:
        with pytest.raises(NoSuchBucketError):
            await missing.head_bucket()
    finally:
        missing.close()
