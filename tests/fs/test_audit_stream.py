"""Audit of the streamed upload (fs/stream.py, branch seqw2): a large file
unlinked while it is still being written and streamed."""

from __future__ import annotations

import os

import trio

from cosencfs.errors import NotFoundError
from cosencfs.fs.core import Filesystem
from cosencfs.store.cos import CosStore
from tests.testlib import FsFactory

ROOT = 1
MIB = 1 << 20


async def test_a_file_unlinked_while_streamed_is_not_journaled_again(
    make_fs: FsFactory, store: CosStore
) -> None:
    """``rm`` of a large file a writer still writes (a download deleted half-way).

    The unlink deletes the file's record; the parts the stream sealed after
    it journaled the file again (``on_seal``), so a crash before the writer
    closed it made the next mount's recovery upload the deleted file.  What
    the journal holds at any moment is what a crash leaves.
    """
    fs: Filesystem = await make_fs()
    fh, _ = await fs.create(ROOT, b"s.bin", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
    chunk = os.urandom(MIB)
    off = 0
    for _ in range(20):  # past one PUT: the stream has started, parts are sealed
        await fs.write(fh, off, chunk)
        off += MIB
    await fs.unlink(ROOT, b"s.bin")
    assert [r.key for r in fs.ctx.journal.dirty_records()] == []
    for _ in range(20):  # more parts to seal, the file unlinked and still open
        await fs.write(fh, off, chunk)
        off += MIB
    assert [r.key for r in fs.ctx.journal.dirty_records()] == [], "a crash now revives it"
    await fs.flush(fh)
    await fs.release(fh)
    await fs.sync_all()
    await trio.sleep(1.0)  # (the abandoned stream's abort, in the background)
    assert [r.key for r in fs.ctx.journal.dirty_records()] == []
    try:
        await store.head("s.bin")
    except NotFoundError:
        pass
    else:
        raise AssertionError("the unlinked file was uploaded")
    # Nothing left half-way in COS either (the stream's upload is aborted).
    assert await store.list_uploads("s.bin") == []


async def test_ftruncate_of_an_open_unlinked_file_is_not_journaled(make_fs: FsFactory) -> None:
    fs: Filesystem = await make_fs()
    fh, entry = await fs.create(ROOT, b"o.bin", 0o644, os.O_RDWR | os.O_CREAT, 0, 0)
    await fs.write(fh, 0, b"x" * 5000)
    await fs.flush(fh)
    await fs.unlink(ROOT, b"o.bin")
    assert [r.key for r in fs.ctx.journal.dirty_records()] == []
    await fs.setattr(entry.ino, size=10)  # ftruncate(fd, 10), the file unlinked
    assert [r.key for r in fs.ctx.journal.dirty_records()] == [], "a crash now revives it"
    await fs.release(fh)
