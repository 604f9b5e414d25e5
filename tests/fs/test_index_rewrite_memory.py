"""A directory index's body never in the daemon's memory (issue 18).

The entry lines of a rewrite (~15 MB at 100,000 entries) grew in a heap
``bytearray``, then in a private anonymous mapping: either way resident in
the daemon, and its peak RSS.  A cold listing received the index into a
mapping too.  Both now lie in an unlinked private file of the cache's data
directory (cosencfs/fs/indexbuf.py), written and read a chunk at a time,
closed (and so gone) when the rewrite or listing ends; decoding from the
file refuses exactly what decoding from bytes refuses.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from cosencfs.crypto.dirindex import AttrState, IndexEntry, decode_index, encode_index, encode_rows
from cosencfs.crypto.dirindexfile import file_entries, verify_file
from cosencfs.crypto.objecttags import TagKey
from cosencfs.errors import IntegrityError
from cosencfs.fs import dirindex, indexbuf
from cosencfs.fs.core import Filesystem
from cosencfs.fs.inode import ROOT_INO
from cosencfs.store.base import Body, FileRange
from cosencfs.store.bodies import read_small_body
from cosencfs.store.cos import CosStore
from tests.fs.test_filesystem import names, write_file
from tests.testlib import FsFactory

N = 2000


async def _directory(
    make_fs: FsFactory, prefix: str = "file-with-a-longer-name-"
) -> tuple[Filesystem, int]:
    fs = await make_fs()
    d = await fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
    for i in range(N):
        await write_file(fs, d.ino, f"{prefix}{i:05d}", b"x" * 16, sync=False)
    await fs.sync_all()
    return fs, d.ino


def _opened(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, os.stat_result]]:
    """The private files indexbuf opens from now on: (descriptor, its stat then)."""
    seen: list[tuple[int, os.stat_result]] = []
    real = indexbuf.open_private

    def watching(directory: Path) -> int:
        fd = real(directory)
        seen.append((fd, os.fstat(fd)))
        return fd

    monkeypatch.setattr(indexbuf, "open_private", watching)
    return seen


def _gone(fd: int, was: os.stat_result) -> bool:
    """Whether the file ``fd`` was is closed (its number unused, or another file's)."""
    try:
        now = os.fstat(fd)
    except OSError:
        return True
    return (now.st_dev, now.st_ino) != (was.st_dev, was.st_ino)


async def test_rewrite_sends_the_index_from_a_private_file_gone_after(
    make_fs: FsFactory, store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, d = await _directory(make_fs)
    data_dir = fs.ctx.cache.data_dir
    files_before = sorted(os.listdir(data_dir))
    sent: list[tuple[Body, bytes, os.stat_result, str]] = []
    put = fs.ctx.store.put

    async def watching(key: str, body: Body, *args: object, **kw: object) -> str:
        if key.endswith(".cosencfs-index"):
            assert isinstance(body, FileRange)  # (a view of a mapping before)
            st = os.stat(body.path)
            sent.append((body, bytes(read_small_body(body)), st, os.readlink(body.path)))
        return await put(key, body, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fs.ctx.store, "put", watching)
    opened = _opened(monkeypatch)
    await fs.dirindex.write(fs.ns.directory(d))
    assert len(sent) == 1
    body, data, st, link = sent[0]
    assert isinstance(body, FileRange)
    assert body.path.startswith("/proc/self/fd/")
    assert st.st_nlink == 0  # nameless: nothing to leave behind after a crash
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()
    assert link.startswith(str(data_dir))  # in the cache's private data directory
    assert [(st.st_dev, st.st_ino)] == [(s.st_dev, s.st_ino) for _, s in opened]
    assert all(_gone(fd, s) for fd, s in opened)  # closed once the rewrite ended
    assert sorted(os.listdir(data_dir)) == files_before
    entries = list(decode_index(fs.dirindex._keys, prefix="d/", body=data))
    assert len(entries) == N
    assert [e.name for e in entries] == sorted(e.name for e in entries)
    assert data == await store.get("d/.cosencfs-index")


async def test_rewrite_that_fails_closes_its_file(
    make_fs: FsFactory, store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, d = await _directory(make_fs)

    async def failing(key: str, body: Body, *args: object, **kw: object) -> str:
        raise OSError("no room")

    monkeypatch.setattr(fs.ctx.store, "put", failing)
    opened = _opened(monkeypatch)
    with pytest.raises(OSError):
        await fs.dirindex.write(fs.ns.directory(d))
    assert len(opened) == 1
    assert _gone(*opened[0])

    async def stuck(key: str, body: Body, *args: object, **kw: object) -> str:
        await trio.sleep_forever()
        raise AssertionError

    monkeypatch.setattr(fs.ctx.store, "put", stuck)
    with trio.move_on_after(0.5):
        await fs.dirindex.write(fs.ns.directory(d))
    assert len(opened) == 2
    assert _gone(*opened[1])


async def test_carried_over_entries_merge_through_files(
    make_fs: FsFactory, store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries of the old index (read from a file) go in at their places among
    this mount's lines (copied file to file): the old index's 2,000 entries
    first, then 600 of this mount's, more than one copy's worth."""
    await _directory(make_fs, prefix="a-")
    fs = await make_fs()
    d = await fs.lookup(ROOT_INO, b"d")
    assert len(await names(fs, d.ino)) == N
    for i in range(600):
        await write_file(fs, d.ino, f"b-with-a-longer-name-{i:05d}", b"y", sync=False)
    opened = _opened(monkeypatch)
    await fs.sync_all()
    assert len(opened) >= 3  # per rewrite: the lines, the old index received, the merge
    assert all(_gone(fd, s) for fd, s in opened)
    entries = list(
        decode_index(fs.dirindex._keys, prefix="d/", body=await store.get("d/.cosencfs-index"))
    )
    want = [f"a-{i:05d}" for i in range(N)] + [f"b-with-a-longer-name-{i:05d}" for i in range(600)]
    assert [e.name for e in entries] == want


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


async def test_cold_listing_reads_the_index_a_chunk_at_a_time(
    make_fs: FsFactory, store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _directory(make_fs)
    monkeypatch.setattr(indexbuf, "CHUNK", 64 * 1024)
    size = (await store.head("d/.cosencfs-index")).size
    assert size > 4 * 64 * 1024
    buffers: list[int] = []
    fs = await make_fs()
    get_into = fs.ctx.store.get_into

    async def watching(
        key: str, start: int, end: int, buffer: Callable[[int], memoryview], **kw: object
    ) -> memoryview:
        def give(n: int) -> memoryview:
            buffers.append(n)
            return buffer(n)

        return await get_into(key, start, end, give, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fs.ctx.store, "get_into", watching)
    mapped: list[int] = []
    real_mmap = indexbuf._mmap

    def mapping(n: int) -> mmap.mmap:
        mapped.append(n)
        return real_mmap(n)

    monkeypatch.setattr(indexbuf, "_mmap", mapping)
    opened = _opened(monkeypatch)
    d = await fs.lookup(ROOT_INO, b"d")
    before = store.counters.snapshot()
    listed = await names(fs, d.ino)
    assert len(listed) == N
    assert fs.dirindex.stats.applied == N  # every entry from the index, none HEADed
    chunks = -(-size // (64 * 1024))
    assert dict(store.counters.snapshot().minus(before).requests) == {
        "ListObjects": 3,  # (2,000 files and the index: three pages)
        "GetObject": chunks,
    }
    assert buffers
    assert max(buffers) <= 64 * 1024
    assert mapped
    assert max(mapped) <= 64 * 1024
    assert len(opened) == 1
    assert _gone(*opened[0])


def _index(n: int) -> tuple[dict[str, TagKey], bytes]:
    tk = TagKey(os.urandom(32))
    entries = [
        IndexEntry(
            f"f{i:04d}", "e" * 32, i, 1.5, ("33188", "0", "0", "1", None), AttrState.AUTHENTIC
        )
        for i in range(n)
    ]
    return {"k1": tk}, encode_index(tk, kid="k1", prefix="d/", entries=entries)


def _from_file(
    keys: dict[str, TagKey], body: bytes, chunk: int, tmp: Path
) -> list[IndexEntry] | str:
    fd = indexbuf.open_private(tmp)
    buf = indexbuf._mmap(chunk)
    try:
        os.pwrite(fd, body, 0)
        start, end = verify_file(keys, prefix="d/", fd=fd, size=len(body), buf=buf)
        return list(file_entries(fd, start, end, "d/.cosencfs-index", buf))
    except IntegrityError as exc:
        return str(exc)
    finally:
        buf.close()
        os.close(fd)


def _outcome(keys: dict[str, TagKey], body: bytes) -> list[IndexEntry] | str:
    try:
        return list(decode_index(keys, prefix="d/", body=body))
    except IntegrityError as exc:
        return str(exc)


@pytest.mark.parametrize("chunk", [7, 100, 4096, 1024 * 1024])
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
        pytest.param(lambda b: b + b"mac " + b"A" * 5000 + b"\n", id="long-mac-line"),
        pytest.param(lambda b: b[:25] + b[25:].replace(b"\n", b" ", 1), id="header-unended"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b[: b.find(b"\n") + 1] + b"{}\nmac x\n", id="header-fields-gone"),
    ],
)
def test_an_index_in_a_file_decodes_as_the_same_bytes_do(
    damage: Callable[[bytes], bytes], chunk: int, tmp_path: Path
) -> None:
    keys, body = _index(50)
    damaged = damage(body)
    expected = _outcome(keys, damaged)
    assert len(expected) == 50 if isinstance(expected, list) else expected
    assert _from_file(keys, damaged, chunk, tmp_path) == expected
    assert os.listdir(tmp_path) == []  # (nameless files)


@pytest.mark.parametrize("chunk", [7, 4096])
def test_an_authentic_bad_line_is_refused_from_a_file_too(chunk: int, tmp_path: Path) -> None:
    keys, _ = _index(0)
    rows = bytearray(b'["f0001","e",1,1.5,null,null,null,null,null,"a",null]\n[1,2]\n')
    body = bytes(encode_rows(keys["k1"], kid="k1", prefix="d/", n=2, rows=rows))
    assert str(_outcome(keys, body)).startswith("directory index entry malformed")
    assert _from_file(keys, body, chunk, tmp_path) == _outcome(keys, body)


def test_without_o_tmpfile_the_file_is_unlinked_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.open

    def no_tmpfile(path: object, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "no O_TMPFILE here")
        return real(path, flags, mode)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", no_tmpfile)
    fd = indexbuf.open_private(tmp_path)
    try:
        st = os.fstat(fd)
        assert st.st_nlink == 0
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert os.listdir(tmp_path) == []
    finally:
        os.close(fd)
