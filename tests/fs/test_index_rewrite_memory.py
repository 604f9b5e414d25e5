"""A directory-index rewrite leaves the daemon no larger (issue 18).

The entry lines of a rewrite used to grow in a ``bytearray`` on the heap
(~15 MB at 100,000 entries, reallocated on the way), which the heap could
not give back below the per-file objects allocated after it: the daemon's
RSS rose by 20-29 MiB at every rewrite.  They now go into a mapping of
their own, unmapped when the rewrite ends (cosencfs/fs/indexbuf.py); a
cold listing receives the index into a mapping and decodes it there, and
decoding from a mapping refuses exactly what decoding from bytes refuses.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Callable

import pytest

from cosencfs.crypto.dirindex import AttrState, IndexEntry, decode_index, encode_index
from cosencfs.crypto.objecttags import TagKey
from cosencfs.errors import IntegrityError
from cosencfs.fs import dirindex
from cosencfs.fs.core import Filesystem
from cosencfs.fs.inode import ROOT_INO
from cosencfs.store.base import Body
from cosencfs.store.cos import CosStore
from tests.fs.test_filesystem import names, write_file
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


async def test_cold_listing_decodes_the_index_from_a_mapping(
    make_fs: FsFactory, store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _directory(make_fs)
    seen: list[object] = []
    real = decode_index

    def watching(keys: object, *, prefix: str, body: bytes | mmap.mmap) -> object:
        seen.append(body)
        return real(keys, prefix=prefix, body=body)  # type: ignore[arg-type]

    monkeypatch.setattr(dirindex, "decode_index", watching)
    fs = await make_fs()
    d = await fs.lookup(ROOT_INO, b"d")
    before = store.counters.snapshot()
    listed = await names(fs, d.ino)
    assert len(listed) == N
    assert fs.dirindex.stats.applied == N  # every entry from the index, none HEADed
    assert dict(store.counters.snapshot().minus(before).requests) == {
        "ListObjects": 3,  # (2,000 files and the index: three pages)
        "GetObject": 1,
    }
    assert len(seen) == 1
    body = seen[0]
    assert isinstance(body, mmap.mmap)  # (a heap bytes before, and a second copy for its MAC)
    assert body.closed  # unmapped once applied


def _index(n: int) -> tuple[dict[str, TagKey], bytes]:
    tk = TagKey(os.urandom(32))
    entries = [
        IndexEntry(
            f"f{i:04d}", "e" * 32, i, 1.5, ("33188", "0", "0", "1", None), AttrState.AUTHENTIC
        )
        for i in range(n)
    ]
    return {"k1": tk}, encode_index(tk, kid="k1", prefix="d/", entries=entries)


def _mapped(data: bytes) -> mmap.mmap:
    m = mmap.mmap(-1, len(data), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m[:] = data
    return m


def _outcome(keys: dict[str, TagKey], body: bytes | mmap.mmap) -> list[IndexEntry] | str:
    try:
        return list(decode_index(keys, prefix="d/", body=body))
    except IntegrityError as exc:
        return str(exc)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b, id="intact"),
        pytest.param(lambda b: b[:-1], id="no-final-newline"),
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b[:40] + b"X" + b[41:], id="one-byte-changed"),
        pytest.param(lambda b: b.replace(b"f0003", b"f0009", 1), id="entry-renamed"),
        pytest.param(lambda b: b[:200] + b[200:].replace(b"\n", b"\n\n", 1), id="extra-line"),
        pytest.param(lambda b: b"X" + b[1:], id="magic"),
        pytest.param(lambda b: b[: b.rfind(b"mac ")], id="mac-line-gone"),
    ],
)
def test_a_mapped_index_decodes_as_the_same_bytes_do(damage: Callable[[bytes], bytes]) -> None:
    keys, body = _index(50)
    damaged = damage(body)
    expected = _outcome(keys, damaged)
    assert len(expected) == 50 if isinstance(expected, list) else expected
    with contextlib.closing(_mapped(damaged)) as m:
        assert _outcome(keys, m) == expected
