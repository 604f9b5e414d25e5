"""Recovery after a crash between COS taking an upload and the journal recording it.

Each test stages the window directly on MemoryStore: the store's PUT (or
multipart complete) lands, and the process dies before the commit returns
(its nursery is cancelled, the cache manager closed without any upload).
A new Filesystem over the same cache directory then runs ``recover()``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import pytest
import trio

from cosencfs.cache.manager import CacheManager
from cosencfs.crypto.ctr import decrypt
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.errors import NoSuchUploadError
from cosencfs.fs.attrs import META_SIZE
from cosencfs.fs.core import Filesystem
from cosencfs.fs.recovery import RecoveryReport
from cosencfs.store.base import Body, completed_by
from cosencfs.store.memory import MemoryStore
from tests.testlib import fs_options

ROOT = 1
Step = Callable[[Filesystem, trio.Nursery], Awaitable[None]]


class CutOff(MemoryStore):
    """A store whose next PUT or multipart complete lands, then never answers."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = ""
        self.landed = trio.Event()

    async def _land(self, what: str) -> None:
        if self.armed == what:
            self.armed = ""
            self.landed.set()
            await trio.sleep_forever()  # the crash comes before the answer

    async def put(
        self,
        key: str,
        body: Body,
        metadata: Mapping[str, str],
        *,
        content_type: str = "",
        if_none_match: bool = False,
    ) -> str:
        etag = await super().put(
            key, body, metadata, content_type=content_type, if_none_match=if_none_match
        )
        await self._land("put")
        return etag

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> str:
        etag = await super().complete_multipart(key, upload_id, parts)
        await self._land("complete")
        return etag


async def run(
    store: MemoryStore, codec: EnvelopeCodec, cache: Path, step: Step, **kw: object
) -> RecoveryReport:
    """A mount over ``cache``: recover, run ``step``, then die (no flush, no upload)."""
    kw.setdefault("writeback_delay", 3600.0)
    kw.setdefault("max_dirty_age", 3600.0)
    mgr = CacheManager(cache, store, limit_bytes=1 << 30)
    try:
        fs = Filesystem(store, codec, mgr, fs_options(**kw))
        report = await fs.recover()
        async with trio.open_nursery() as nursery:
            await fs.start(nursery)
            await step(fs, nursery)
            nursery.cancel_scope.cancel()
    finally:
        mgr.close()
    return report


async def content(store: MemoryStore, codec: EnvelopeCodec, key: str) -> bytes:
    info = await store.head(key)
    assert info.metadata[META_SIZE] == str(info.size)
    return decrypt(codec.open(info.metadata), 0, await store.get(key))


async def nothing(fs: Filesystem, nursery: trio.Nursery) -> None:
    return None


async def create(fs: Filesystem, name: str, data: bytes) -> int:
    fh, entry = await fs.create(ROOT, name.encode(), 0o640, os.O_WRONLY | os.O_CREAT, 0, 0)
    await fs.write(fh, 0, data)
    await fs.fsync(fh, False)
    await fs.release(fh)
    return entry.ino


async def crash_in_upload(store: CutOff, fs: Filesystem, nursery: trio.Nursery, fh: int) -> None:
    """fsync ``fh``; its upload lands in COS and the process dies right after."""
    nursery.start_soon(fs.fsync, fh, False)
    await store.landed.wait()


def journal_keys(cache: Path, store: MemoryStore) -> list[str]:
    mgr = CacheManager(cache, store, limit_bytes=1 << 30)
    try:
        return [r.key for r in mgr.journal.dirty_records()]
    finally:
        mgr.close()


async def test_put_landed_then_crash_the_record_is_done(
    tmp_path: Path, codec: EnvelopeCodec
) -> None:
    store = CutOff()
    cache = tmp_path / "cache"
    first, second = os.urandom(5000), os.urandom(300)
    expected = first[:1000] + second + first[1300:]

    async def step(fs: Filesystem, nursery: trio.Nursery) -> None:
        ino = await create(fs, "f", first)
        fh, _ = await fs.open(ino, os.O_WRONLY)
        await fs.write(fh, 1000, second)
        store.armed = "put"
        await crash_in_upload(store, fs, nursery, fh)

    await run(store, codec, cache, step)
    assert journal_keys(cache, store) == ["f"]  # the record still names the old ETag
    assert await content(store, codec, "f") == expected  # but COS took the upload
    before = store.counters.snapshot()
    report = await run(store, codec, cache, nothing)
    assert report.failed == {}
    assert report.uploaded == ["f"]
    spent = store.counters.snapshot().minus(before).requests
    assert "PutObject" not in spent  # recognised, not uploaded again
    assert "GetObject" not in spent
    assert journal_keys(cache, store) == []
    assert await content(store, codec, "f") == expected


async def test_new_file_put_landed_unsealed_then_crash_is_sent_again_under_a_fresh_key(
    tmp_path: Path, codec: EnvelopeCodec
) -> None:
    # A new file going up in one PUT: its commit does not journal the seal
    # (cosencfs/fs/dirtyrecord.py), so the journal still holds the close
    # record, unsealed, when the PUT lands and the process dies.
    store = CutOff()
    cache = tmp_path / "cache"
    data = os.urandom(3000)
    crashed: dict[str, str] = {}

    async def step(fs: Filesystem, nursery: trio.Nursery) -> None:
        fh, _ = await fs.create(ROOT, b"f", 0o640, os.O_WRONLY | os.O_CREAT, 0, 0)
        await fs.write(fh, 0, data)
        await fs.flush(fh)  # close(): the record recovery will find
        store.armed = "put"
        await crash_in_upload(store, fs, nursery, fh)
        crashed.update((await store.head("f")).metadata)

    await run(store, codec, cache, step)
    mgr = CacheManager(cache, store, limit_bytes=1 << 30)
    try:
        (rec,) = mgr.journal.dirty_records()
    finally:
        mgr.close()
    assert not rec.layers[0].sealed
    assert rec.object_envelope is not None
    assert all(crashed[k] == v for k, v in rec.object_envelope.items())  # that PUT's
    assert await content(store, codec, "f") == data
    before = store.counters.snapshot()
    report = await run(store, codec, cache, nothing)
    assert report.failed == {}
    assert report.uploaded == ["f"]
    spent = store.counters.snapshot().minus(before).requests
    assert spent.get("PutObject") == 1  # sent again (the same bytes) ...
    assert "GetObject" not in spent  # ... with nothing read back
    assert journal_keys(cache, store) == []
    after = (await store.head("f")).metadata
    # ... under a fresh data key: the crashed PUT's key encrypts nothing more.
    assert codec.open(after).key != codec.open(crashed).key
    assert codec.open(after).iv != codec.open(crashed).iv
    assert await content(store, codec, "f") == data


async def test_layer_written_on_top_of_the_landed_upload_is_rebased(
    tmp_path: Path, codec: EnvelopeCodec
) -> None:
    store = CutOff()
    cache = tmp_path / "cache"
    first, second, third = os.urandom(5000), os.urandom(300), os.urandom(200)
    gate = trio.Event()
    uploaded = first[:1000] + second + first[1300:]
    expected = uploaded[:4000] + third + uploaded[4200:]

    async def step(fs: Filesystem, nursery: trio.Nursery) -> None:
        ino = await create(fs, "f", first)
        fh, _ = await fs.open(ino, os.O_WRONLY)
        await fs.write(fh, 1000, second)
        store.armed = "put"
        orig_land = store._land

        async def held(what: str) -> None:  # land only once the layer on top is journaled
            await gate.wait()
            await orig_land(what)

        store._land = held  # type: ignore[method-assign]
        nursery.start_soon(fs.fsync, fh, False)
        await trio.sleep(0.05)  # the commit is uploading now
        await fs.write(fh, 4000, third)  # a new head on top of the sealed one
        await fs.flush(fh)  # close(): journaled, on top of the layer being uploaded
        gate.set()
        await store.landed.wait()

    await run(store, codec, cache, step)
    assert await content(store, codec, "f") == uploaded  # COS has the lower layer only
    report = await run(store, codec, cache, nothing)
    assert report.failed == {}
    assert journal_keys(cache, store) == []
    assert await content(store, codec, "f") == expected


async def test_streamed_complete_landed_before_its_metadata_copy(
    tmp_path: Path, codec: EnvelopeCodec
) -> None:
    store = CutOff()
    cache = tmp_path / "cache"
    data = os.urandom(3000)

    async def step(fs: Filesystem, nursery: trio.Nursery) -> None:
        fh, _ = await fs.create(ROOT, b"s", 0o600, os.O_WRONLY | os.O_CREAT, 0, 0)
        for at in range(0, len(data), 1000):
            await fs.write(fh, at, data[at : at + 1000])
        store.armed = "complete"
        await crash_in_upload(store, fs, nursery, fh)

    await run(store, codec, cache, step, single_put_max=1024)
    info = await store.head("s")
    assert META_SIZE not in info.metadata  # its final metadata was never put
    report = await run(store, codec, cache, nothing, single_put_max=1024)
    assert report.failed == {}
    assert journal_keys(cache, store) == []
    assert await content(store, codec, "s") == data
    assert (await store.head("s")).metadata["mode"] == str(0o100600)


async def uploaded_then_written(fs: Filesystem, nursery: trio.Nursery) -> None:
    """'f' uploaded, then 5 bytes written into it and closed: a record on its ETag."""
    ino = await create(fs, "f", os.urandom(5000))
    fh, _ = await fs.open(ino, os.O_WRONLY)
    await fs.write(fh, 10, b"dirty")
    await fs.flush(fh)


async def test_another_writer_replaced_the_base_the_record_is_kept(
    tmp_path: Path, codec: EnvelopeCodec
) -> None:
    store = CutOff()
    cache = tmp_path / "cache"

    await run(store, codec, cache, uploaded_then_written)
    await store.put("f", b"someone else's object", {})
    report = await run(store, codec, cache, nothing)
    assert "another writer" in report.failed["f"]
    assert journal_keys(cache, store) == ["f"]
    assert await store.get("f") == b"someone else's object"


async def test_base_with_the_recorded_etag_but_another_body_is_never_read(
    tmp_path: Path, codec: EnvelopeCodec
) -> None:
    store = CutOff()
    cache = tmp_path / "cache"

    await run(store, codec, cache, uploaded_then_written)
    # What the silent form left: our ETag and envelope on a body that is not ours.
    objects = store._bucket._objects
    objects["f"] = dataclasses.replace(objects["f"], body=os.urandom(700))
    before = store.counters.snapshot()
    report = await run(store, codec, cache, nothing)
    assert "is not the one journaled" in report.failed["f"]
    assert "GetObject" not in store.counters.snapshot().minus(before).requests
    assert journal_keys(cache, store) == ["f"]


async def test_a_lost_complete_takes_only_its_own_object() -> None:
    store = MemoryStore()
    older = await store.create_multipart("k", {})
    part = await store.upload_part("k", older, 1, b"x" * 100)
    etag = await store.complete_multipart("k", older, [(1, part)])
    assert completed_by(etag, [(1, part)])
    # The same complete again (its answer lost): the object is ours.
    assert await store.complete_multipart("k", older, [(1, part)]) == etag
    # Another upload, gone (aborted), finds an older "-1" object there: not its own.
    mine = await store.create_multipart("k", {})
    other = await store.upload_part("k", mine, 1, b"y" * 100)
    await store.abort_multipart("k", mine)
    with pytest.raises(NoSuchUploadError):
        await store.complete_multipart("k", mine, [(1, other)])
    assert not completed_by(etag, [(1, other)])
