"""A large file's commit produces, tags and sends its parts in a pipeline
(cosencfs/fs/pipeline.py, cosencfs/cache/assemble.py ``produce_tagged``).

Counted and ordered, not timed: on MemoryStore with a latency, the
InitiateMultipartUpload and the first UploadPart leave while the upload copy
is still being produced; the object COS holds afterwards decrypts to the
file and verifies against its tags; a crash between the complete and the
metadata copy, or half-way through the parts, is recovered.
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from cosencfs.cache import assemble
from cosencfs.cache.content import ObjectContent
from cosencfs.cache.manager import CacheManager
from cosencfs.crypto.ctr import decrypt
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.integrity import (
    CHUNK_SIZE,
    OBJECT_TAG_FIELD,
    TAGS_REF_FIELD,
    ChunkKey,
    TagKey,
    open_tags,
)
from cosencfs.errors import TransientError
from cosencfs.fs.attrs import META_SIZE
from cosencfs.fs.core import Filesystem
from cosencfs.fs.tagcheck import COMPANION_DIR
from cosencfs.store.base import Body
from cosencfs.store.memory import MemoryStore
from tests.testlib import fs_options

ROOT = 1
MIB = 1 << 20


class Watched(MemoryStore):
    """MemoryStore that notes, for each multipart request, how much of the
    file's upload copy was produced when it was sent."""

    def __init__(self, latency_ms: int = 0) -> None:
        super().__init__(latency_ms=latency_ms)
        self.fs: Filesystem | None = None
        self.ino = 0
        self.seen: list[tuple[str, int, int]] = []  # (request, part, bytes produced)
        self.fail_parts_after = -1
        self.hang_after_complete = False
        self.landed = trio.Event()

    def _produced(self) -> int:
        if self.fs is None or not self.ino:
            return -1
        node = self.fs.ctx.table.get(self.ino)
        head = None if node is None else node.as_file.head
        staged = None if head is None else head.staged
        return -1 if staged is None else staged.present.total

    async def create_multipart(
        self,
        key: str,
        metadata: Mapping[str, str],
        *,
        content_type: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> str:
        self.seen.append(("initiate", 0, self._produced()))
        return await super().create_multipart(
            key, metadata, content_type=content_type, headers=headers
        )

    async def upload_part(self, key: str, upload_id: str, part_number: int, body: Body) -> str:
        self.seen.append(("part", part_number, self._produced()))
        if 0 <= self.fail_parts_after < sum(1 for s in self.seen if s[0] == "part"):
            raise TransientError("the network goes down here", op="UploadPart", key=key)
        return await super().upload_part(key, upload_id, part_number, body)

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> str:
        etag = await super().complete_multipart(key, upload_id, parts)
        if self.hang_after_complete:
            self.landed.set()
            await trio.sleep_forever()  # the crash comes before the answer
        return etag


async def _stored(store: MemoryStore, codec: EnvelopeCodec, key: str) -> bytes:
    """The object's plaintext, after checking every chunk tag against what COS holds."""
    info = await store.head(key)
    meta = dict(info.metadata)
    assert meta[META_SIZE] == str(info.size)
    body = await store.get(key)
    tk = TagKey.for_object(meta, codec.masters, key=key)
    companion = await store.get(f"{COMPANION_DIR}/{meta[TAGS_REF_FIELD]}")
    content = open_tags(tk, key=key, size=info.size, metadata=meta, companion=companion)
    assert len(content.chunk_tags) == -(-len(body) // CHUNK_SIZE)
    dk = codec.open(meta)
    content.verify_range(ChunkKey(dk), 0, body)
    return decrypt(dk, 0, body)


async def _uploaded(fs: Filesystem, data: bytes) -> int:
    fh, entry = await fs.create(ROOT, b"db", 0o600, os.O_RDWR, 0, 0)
    await fs.write(fh, 0, data)
    await fs.fsync(fh, False)
    await fs.release(fh)
    return entry.ino


async def _rewrite(fs: Filesystem, ino: int, want: bytearray, n: int, seed: int) -> int:
    """``n`` random 4 KiB writes in place (a database's pages), then fsync."""
    rng = random.Random(seed)
    fh, _ = await fs.open(ino, os.O_RDWR)
    for _ in range(n):
        off = rng.randrange(0, len(want) // 4096) * 4096
        page = rng.randbytes(4096)
        want[off : off + 4096] = page
        await fs.write(fh, off, page)
    return fh


async def test_the_initiate_and_the_first_part_leave_while_the_copy_is_produced(
    tmp_path: Path, codec: EnvelopeCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    read_plain = ObjectContent.read_plain

    def counted(self: ObjectContent, offset: int, length: int) -> bytes:
        reads.append(length)
        return read_plain(self, offset, length)

    monkeypatch.setattr(ObjectContent, "read_plain", counted)
    store = Watched(latency_ms=5)
    data = bytearray(os.urandom(48 * MIB + 4100))
    mgr = CacheManager(tmp_path / "cache", store, limit_bytes=1 << 30)
    try:
        fs = Filesystem(store, codec, mgr, fs_options(writeback_delay=3600.0))
        async with trio.open_nursery() as nursery:
            await fs.start(nursery)
            ino = await _uploaded(fs, bytes(data))
            store.fs, store.ino = fs, ino
            store.seen.clear()
            before = store.counters.snapshot()
            fh = await _rewrite(fs, ino, data, 400, seed=5)
            tag_copy = fs.ctx.tags.tag_copy
            tagged_from_file: list[int] = []

            async def watched_tag_copy(*args: Any) -> list[bytes]:
                tagged_from_file.append(1)
                return await tag_copy(*args)

            monkeypatch.setattr(fs.ctx.tags, "tag_copy", watched_tag_copy)
            reads.clear()
            await fs.fsync(fh, False)
            await fs.release(fh)
            spent = store.counters.snapshot().minus(before).requests
            nursery.cancel_scope.cancel()
    finally:
        mgr.close()
    size = len(data)
    initiate = [s for s in store.seen if s[0] == "initiate"]
    parts = [s for s in store.seen if s[0] == "part"]
    assert len(initiate) == 1
    assert len(parts) == 7
    # Sent before the copy was produced (the old commit produced and tagged
    # it all first): the initiate at once, the first PUT after its part
    # (parts are produced two at a time: the first may be part 1 or 2).
    assert 0 <= initiate[0][2] < size
    assert parts[0][2] < size
    assert spent["InitiateMultipartUpload"] == spent["CompleteMultipartUpload"] == 1
    assert spent["UploadPart"] == 7
    assert spent["CopyObject"] == 1  # the tags, unknown at the initiate
    assert spent["PutObject"] == 1  # their companion
    # The tags come from the ciphertext as it is made, not from the copy read back.
    assert tagged_from_file == []
    # The clean copy is read (and decrypted) once per 1 MiB step, not once
    # per piece between the 400 records (~450 reads before).
    assert len(reads) <= -(-size // MIB) + 8
    assert await _stored(store, codec, "db") == data


async def test_a_file_rewritten_at_its_start_and_extended_is_tagged_right(
    tmp_path: Path, codec: EnvelopeCodec
) -> None:
    """A new file written front to back for 10 MiB, then rewritten at its start
    (which burns the direct copy's key) and extended past two more parts."""
    store = MemoryStore()
    mgr = CacheManager(tmp_path / "cache", store, limit_bytes=1 << 30)
    head = os.urandom(10 * MIB)
    want = bytearray(head)
    try:
        fs = Filesystem(store, codec, mgr, fs_options(writeback_delay=3600.0))
        async with trio.open_nursery() as nursery:
            await fs.start(nursery)
            fh, _ = await fs.create(ROOT, b"f", 0o600, os.O_RDWR, 0, 0)
            for at in range(0, len(head), MIB):
                await fs.write(fh, at, head[at : at + MIB])
            await fs.write(fh, 0, b"x" * 100)  # not an append: the rest goes to the log
            want[0:100] = b"x" * 100
            tail = os.urandom(21 * MIB + 3)
            await fs.write(fh, len(want), tail)
            want += tail
            await fs.fsync(fh, False)
            await fs.release(fh)
            nursery.cancel_scope.cancel()
    finally:
        mgr.close()
    assert await _stored(store, codec, "f") == want


async def test_parts_its_direct_copy_holds_are_read_back_for_their_tags(
    tmp_path: Path, codec: EnvelopeCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not streamed: a new file written front to back is its upload copy already
    (its direct copy, under the object key), except the writes that were not
    appends; the pipeline reads back what the copy holds and produces the rest,
    in the same job, and tags every part over the bytes COS gets."""
    read_back: list[int] = []
    steps_job = assemble._produce_steps

    def counted(steps: list[assemble._Step], *args: Any) -> None:
        read_back.extend(e - s for ready, s, e in steps if ready is None)
        steps_job(steps, *args)

    monkeypatch.setattr(assemble, "_produce_steps", counted)
    store = MemoryStore()
    mgr = CacheManager(tmp_path / "cache", store, limit_bytes=1 << 30)
    data = os.urandom(20 * MIB + 3)
    try:
        opts = fs_options(writeback_delay=3600.0, stream_uploads=False)
        fs = Filesystem(store, codec, mgr, opts)
        async with trio.open_nursery() as nursery:
            await fs.start(nursery)
            fh, _ = await fs.create(ROOT, b"d", 0o600, os.O_WRONLY, 0, 0)
            for at in range(0, len(data), 3 * MIB + 1):
                await fs.write(fh, at, data[at : at + 3 * MIB + 1])
            await fs.fsync(fh, False)
            await fs.release(fh)
            nursery.cancel_scope.cancel()
    finally:
        mgr.close()
    assert sum(read_back) == len(data)  # every byte from the direct copy
    assert await _stored(store, codec, "d") == data


Step = Callable[[Filesystem, trio.Nursery], Awaitable[None]] | None


async def _mount(store: MemoryStore, codec: EnvelopeCodec, cache: Path, step: Step) -> None:
    """A mount over ``cache``: recover, run ``step``, then die (no flush, no upload)."""
    mgr = CacheManager(cache, store, limit_bytes=1 << 30)
    try:
        fs = Filesystem(store, codec, mgr, fs_options(writeback_delay=3600.0))
        report = await fs.recover()
        assert report.failed == {}
        async with trio.open_nursery() as nursery:
            await fs.start(nursery)
            if step is not None:
                await step(fs, nursery)
            nursery.cancel_scope.cancel()
    finally:
        mgr.close()


async def test_a_failure_half_way_through_the_parts_resumes_them_after_a_restart(
    tmp_path: Path, codec: EnvelopeCodec
) -> None:
    store = Watched()
    cache = tmp_path / "cache"
    data = bytearray(os.urandom(40 * MIB + 7))

    async def fail(fs: Filesystem, nursery: trio.Nursery) -> None:
        ino = await _uploaded(fs, bytes(data))
        fh = await _rewrite(fs, ino, data, 50, seed=9)
        await fs.flush(fh)  # journaled at close, as a restart finds it
        store.seen.clear()
        store.fail_parts_after = 2
        with pytest.raises(TransientError):
            await fs.fsync(fh, False)

    await _mount(store, codec, cache, fail)
    store.fail_parts_after = -1
    assert len(await store.list_uploads()) == 1  # kept for a resume
    before = store.counters.snapshot()
    await _mount(store, codec, cache, None)
    spent = store.counters.snapshot().minus(before).requests
    assert await _stored(store, codec, "db") == data
    assert 1 <= spent["UploadPart"] < 5  # the parts already sent are not sent again
    assert await store.list_uploads() == []


async def test_a_crash_between_the_complete_and_the_tags_copy_is_recovered(
    tmp_path: Path, codec: EnvelopeCodec
) -> None:
    store = Watched()
    cache = tmp_path / "cache"
    data = bytearray(os.urandom(20 * MIB + 5))

    async def crash(fs: Filesystem, nursery: trio.Nursery) -> None:
        ino = await _uploaded(fs, bytes(data))
        fh = await _rewrite(fs, ino, data, 30, seed=11)
        store.hang_after_complete = True
        nursery.start_soon(fs.fsync, fh, False)
        await store.landed.wait()

    await _mount(store, codec, cache, crash)
    store.hang_after_complete = False
    assert OBJECT_TAG_FIELD not in (await store.head("db")).metadata  # the copy never came
    await _mount(store, codec, cache, None)
    assert OBJECT_TAG_FIELD in (await store.head("db")).metadata
    assert await _stored(store, codec, "db") == data
