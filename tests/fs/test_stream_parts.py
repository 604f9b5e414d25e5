"""Streamed parts sent from memory (cosencfs/fs/partjob.py, cosencfs/fs/stream.py).

Counted, not timed: which parts went from the buffer their writes filled,
from the copy read back into a buffer, or from the copy; every part's chunk
tags checked against the bytes COS holds; the mount-wide buffer budget
given back when a stream ends or is abandoned.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

from cosencfs.cache.direct import DIRECT, DIRECT_ALIGN, address
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.integrity import (
    CHUNK_SIZE,
    TAGS_REF_FIELD,
    ChunkKey,
    TagKey,
    open_tags,
)
from cosencfs.fs import partjob
from cosencfs.fs.core import Filesystem
from cosencfs.fs.tagcheck import COMPANION_DIR
from cosencfs.fs.tagparts import tag_ciphertext
from cosencfs.fs.upload import MIN_PART
from cosencfs.store.cos import CosStore
from tests.cache.test_direct import o_direct_opens
from tests.fs.test_filesystem import decrypt_object

ROOT = 1
MIB = 1024 * 1024


async def _write(fs: Filesystem, name: str, data: bytes, step: int) -> None:
    fh, _ = await fs.create(ROOT, name.encode(), 0o600, os.O_WRONLY, 0, 0)
    for off in range(0, len(data), step):
        assert await fs.write(fh, off, data[off : off + step]) == len(data[off : off + step])
    await fs.fsync(fh, False)
    await fs.release(fh)


async def _stored_and_tagged(store: CosStore, codec: EnvelopeCodec, key: str, data: bytes) -> None:
    """COS holds ``data`` under ``key``, and every chunk tag is that of the bytes COS holds."""
    info = await store.head(key)
    meta = dict(info.metadata)
    body = await store.get(key)
    assert decrypt_object(codec, meta, body) == data
    tk = TagKey.for_object(meta, codec.masters, key=key)
    companion = await store.get(f"{COMPANION_DIR}/{meta[TAGS_REF_FIELD]}")
    content = open_tags(tk, key=key, size=info.size, metadata=meta, companion=companion)
    assert len(content.chunk_tags) == -(-len(data) // CHUNK_SIZE)
    content.verify_range(ChunkKey(codec.open(meta)), 0, body)


@pytest.mark.parametrize("step", [MIB, 100_003], ids=["aligned", "unaligned"])
async def test_parts_go_from_the_buffers_their_writes_filled(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec, step: int
) -> None:
    """Once the stream exists, each part's writes leave its ciphertext in a
    buffer (writes across a part boundary split), and the part is tagged and
    sent from there; the parts written before it began are read back once.
    Requests as before: one initiate, one PUT per part, complete, copy."""
    counts = fsys.ctx.part_buffers
    counts.limit = 16  # never spent here: the counts below do not depend on timing
    data = os.urandom(40 * MIB + 12345)
    before = store.counters.snapshot()
    await _write(fsys, "big", data, step)
    spent = store.counters.snapshot().minus(before).requests
    parts = -(-len(data) // MIN_PART)
    assert spent["UploadPart"] == parts
    assert spent["InitiateMultipartUpload"] == spent["CompleteMultipartUpload"] == 1
    assert spent["CopyObject"] == 1
    # The stream starts before the write that takes the file past 16 MiB
    # (one PUT's worth): parts 1-2 had bytes before it, parts 3-6 are held
    # whole (parts 4-6 before branch seqw2, which started it after that write).
    assert (counts.sent_held, counts.sent_loaded, counts.sent_file) == (4, 2, 0)
    assert counts.misses == 0
    assert counts.held == 0  # every buffer back once the stream ended
    await _stored_and_tagged(store, codec, "big", data)


async def test_a_spent_budget_sends_parts_from_the_copy(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec
) -> None:
    counts = fsys.ctx.part_buffers
    counts.limit = 0
    data = os.urandom(30 * MIB + 5)
    await _write(fsys, "big", data, MIB)
    assert (counts.sent_held, counts.sent_loaded, counts.sent_file) == (0, 0, 4)
    assert counts.misses >= 4
    assert counts.held == 0
    await _stored_and_tagged(store, codec, "big", data)


async def test_one_buffer_is_shared_and_memory_stays_within_the_budget(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec
) -> None:
    """With one buffer, parts take turns with it (or go from the copy); the
    budget is never exceeded, whatever the order the parts went up in."""
    counts = fsys.ctx.part_buffers
    counts.limit = 1
    most = 0
    acquire = counts.acquire

    def watched() -> bool:
        nonlocal most
        ok = acquire()
        most = max(most, counts.held)
        return ok

    counts.acquire = watched  # type: ignore[method-assign]
    data = os.urandom(50 * MIB + 77)
    await _write(fsys, "big", data, 256 * 1024)
    assert most == 1
    assert counts.sent_held + counts.sent_loaded + counts.sent_file == 7
    assert counts.sent_held + counts.sent_loaded >= 1
    assert counts.held == 0
    await _stored_and_tagged(store, codec, "big", data)


async def test_an_abandoned_stream_gives_its_buffers_back(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec
) -> None:
    """A write below the sealed mark burns the key and abandons the stream:
    its held parts are dropped and the budget is whole again."""
    counts = fsys.ctx.part_buffers
    counts.limit = 16
    data = bytearray(os.urandom(40 * MIB))
    fh, _ = await fsys.create(ROOT, b"s.bin", 0o644, os.O_RDWR, 0, 0)
    for off in range(0, len(data), MIB):
        await fsys.write(fh, off, bytes(data[off : off + MIB]))
    for _ in range(500):  # parts go up in the background while the file is open
        if counts.sent_held >= 1:
            break
        await trio.sleep(0.01)
    assert counts.held >= 1
    await fsys.write(fh, 100, b"REWRITTEN")
    data[100:109] = b"REWRITTEN"
    await fsys.fsync(fh, False)
    await fsys.release(fh)
    for _ in range(500):  # a part of the abandoned stream may still be on its way
        if counts.held == 0:
            break
        await trio.sleep(0.01)
    assert counts.held == 0
    assert store.counters.snapshot().requests.get("AbortMultipartUpload") == 1
    await _stored_and_tagged(store, codec, "s.bin", bytes(data))


def test_load_part_and_tag_part_agree_with_tagging_the_copy(tmp_path: Path) -> None:
    from cosencfs.crypto.ctr import DataKey

    ck = ChunkKey(DataKey.generate())
    body = os.urandom(3 * MIN_PART + 1000)
    path = tmp_path / "copy"
    path.write_bytes(body)
    buf = bytearray(MIN_PART)
    for start in range(0, len(body), MIN_PART):
        end = min(len(body), start + MIN_PART)
        want = tag_ciphertext(str(path), ck, start, end)
        assert partjob.load_part(str(path), ck, start, end, buf) == want
        assert bytes(buf[: end - start]) == body[start:end]
        assert partjob.tag_part(ck, start, buf, end - start) == want
    assert partjob.load_part(str(path), None, 0, MIN_PART, buf) == []
    with pytest.raises(OSError, match="short"):
        partjob.load_part(str(path), ck, 3 * MIN_PART, 4 * MIN_PART, buf)
    with pytest.raises(ValueError, match="chunk boundary"):
        partjob.load_part(str(path), ck, 100, MIN_PART, buf)
    with pytest.raises(ValueError, match="does not fit"):
        partjob.load_part(str(path), ck, 0, MIN_PART + CHUNK_SIZE, buf)


def test_stream_buffers_reuse_and_give_back() -> None:
    budget = partjob.PartBuffers(limit=2)
    a = partjob.StreamBuffers(budget, 64)
    b = partjob.StreamBuffers(budget, 64)
    x = a.take()
    assert x is not None
    a.give(x)
    assert a.take() is x  # reused, not drawn again
    y = b.take()
    assert y is not None
    assert budget.held == 2
    assert b.take() is None
    assert budget.misses == 1
    a.give(x)
    a.close()
    assert budget.held == 1
    assert a.take() is None  # closed: no buffer any more
    b.close()
    assert budget.held == 1  # y is still out: back when given
    b.give(y)
    assert budget.held == 0


def test_part_buffers_start_on_a_page() -> None:
    """So the ciphertext a part's writes leave there goes to the copy with
    O_DIRECT from where it lies (a 16-byte aligned ``bytearray`` went through
    the direct writer's aligned buffers: one more copy of each byte)."""
    budget = partjob.PartBuffers(limit=3)
    bufs = partjob.StreamBuffers(budget, MIN_PART)
    taken = [bufs.take() for _ in range(3)]
    for buf in taken:
        assert buf is not None
        view = memoryview(buf)
        assert len(view) == MIN_PART
        assert not view.readonly
        assert address(view) % DIRECT_ALIGN == 0


async def test_held_parts_reach_the_copy_without_a_copy_in_between(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec, tmp_path: Path
) -> None:
    """Counted at the O_DIRECT writer: every byte of the parts held whole
    (parts 4-5 of 40 MiB written 1 MiB at a time) is written from the part
    buffer itself; on a 16-byte aligned buffer none was."""
    if not _direct_io_works(tmp_path):
        pytest.skip("the cache's filesystem refuses O_DIRECT")
    fsys.ctx.part_buffers.limit = 16
    before = DIRECT.in_place
    data = os.urandom(40 * MIB)
    await _write(fsys, "big", data, MIB)
    assert fsys.ctx.part_buffers.sent_held >= 2
    assert DIRECT.in_place - before >= fsys.ctx.part_buffers.sent_held * MIN_PART
    await _stored_and_tagged(store, codec, "big", data)


def _direct_io_works(where: Path) -> bool:
    return o_direct_opens(where / "probe") and DIRECT.enabled


async def test_a_part_answered_after_the_abort_leaves_no_upload_in_the_journal(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part on the wire when its stream is abandoned must not write the dead
    upload back into the journal: the next commit would abort it a second
    time, and recovery would try to resume it."""
    real_upload_part = store.upload_part
    answered = trio.Event()
    go_on = trio.Event()

    async def late_answer(key: str, upload_id: str, n: int, body: object) -> str:
        etag = await real_upload_part(key, upload_id, n, body)  # type: ignore[arg-type]
        if n == 2:
            answered.set()
            await go_on.wait()  # its answer is taken only after the abort
        return etag

    real_abort = store.abort_multipart
    aborted = trio.Event()

    async def abort(key: str, upload_id: str) -> None:
        await real_abort(key, upload_id)
        aborted.set()

    monkeypatch.setattr(store, "upload_part", late_answer)
    monkeypatch.setattr(store, "abort_multipart", abort)
    data = bytearray(os.urandom(30 * MIB))
    fh, _ = await fsys.create(ROOT, b"s.bin", 0o644, os.O_RDWR, 0, 0)
    for off in range(0, len(data), MIB):
        await fsys.write(fh, off, bytes(data[off : off + MIB]))
    with trio.fail_after(30):
        await answered.wait()
    fid = fsys.ns.inode((await fsys.lookup(ROOT, b"s.bin")).ino).as_file.fid
    await fsys.write(fh, 100, b"REWRITTEN")  # below the sealed mark: the stream is abandoned
    data[100:109] = b"REWRITTEN"
    with trio.fail_after(30):
        await aborted.wait()
    await trio.testing.wait_all_tasks_blocked()  # the stream's abort has cleared the journal
    go_on.set()
    await trio.testing.wait_all_tasks_blocked()
    rec = fsys.ctx.journal.get_dirty(fid)
    assert rec is not None
    assert rec.upload_id is None
    await fsys.fsync(fh, False)
    await fsys.release(fh)
    assert store.counters.snapshot().requests.get("AbortMultipartUpload") == 1
    assert store.counters.snapshot().requests.get("InitiateMultipartUpload") == 2
    assert await store.list_uploads() == []
    await _stored_and_tagged(store, codec, "s.bin", bytes(data))
