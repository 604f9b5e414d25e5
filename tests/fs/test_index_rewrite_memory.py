"""A directory-index rewrite leaves the daemon no larger (issue 18).

The entry lines of a rewrite used to grow in a ``bytearray`` on the heap
(~15 MB at 100,000 entries, reallocated on the way), which the heap could
not give back below the per-file objects allocated after it: the daemon's
RSS rose by 20-29 MiB at every rewrite.  They now go into a mapping of
their own, unmapped when the rewrite ends (cosencfs/fs/indexbuf.py).
"""

from __future__ import annotations

import mmap
import os

import pytest

from cosencfs.crypto.dirindex import decode_index
from cosencfs.fs import dirindex
from cosencfs.fs.core import Filesystem
from cosencfs.fs.inode import ROOT_INO
from cosencfs.store.base import Body
from cosencfs.store.cos import CosStore
from tests.fs.test_filesystem import write_file
from tests.testlib import FsFactory

N = 2000


async def _directory(make_fs: FsFactory) -> tuple[Filesystem, int]:
    fs = await make_fs()
    d = await fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
    for i in range(N):
        await write_file(fs, d.ino, f"file-with-a-longer-name-{i:05d}", b"x" * 16, sync=False)
    await fs.sync_all()
    return fs, d.ino


async def test_rewrite_sends_the_index_from_a_mapping_and_unmaps_it(
    make_fs: FsFactory, store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, d = await _directory(make_fs)
    sent: list[tuple[type, bytes, mmap.mmap | None]] = []
    put = fs.ctx.store.put

    async def watching(key: str, body: Body, *args: object, **kw: object) -> str:
        if key.endswith(".cosencfs-index"):
            owner = body.obj if isinstance(body, memoryview) else None
            sent.append((type(body), bytes(body), owner if isinstance(owner, mmap.mmap) else None))  # type: ignore[arg-type]
        return await put(key, body, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fs.ctx.store, "put", watching)
    await fs.dirindex.write(fs.ns.directory(d))
    assert len(sent) == 1
    kind, body, mapping = sent[0]
    assert kind is memoryview  # (a bytearray before)
    assert mapping is not None
    assert mapping.closed  # unmapped once the rewrite ended
    entries = list(decode_index(fs.dirindex._keys, prefix="d/", body=body))
    assert len(entries) == N
    assert [e.name for e in entries] == sorted(e.name for e in entries)


async def test_index_over_the_bound_is_not_written(
    make_fs: FsFactory, store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, d = await _directory(make_fs)
    before = (await store.head("d/.cosencfs-index")).etag
    await write_file(fs, d, "one-more", os.urandom(8), sync=False)
    await fs.sync_all()
    after = await store.head("d/.cosencfs-index")
    assert after.etag != before  # (rewritten within the bound)
    monkeypatch.setattr(dirindex, "MAX_INDEX_BYTES", after.size // 2)
    await write_file(fs, d, "two-more", os.urandom(8), sync=False)
    await fs.sync_all()
    assert (await store.head("d/.cosencfs-index")).etag == after.etag  # not rewritten
