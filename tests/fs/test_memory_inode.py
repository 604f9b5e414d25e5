"""What one known file's inode costs (issue 18, fifth round: 100,000 files < 200 MiB).

A closed, clean file without a clean copy holds no ``FileState`` (every
field would be its default, its size the object's: ``Inode.compact_file``),
so neither a file this mount created once its copy is evicted, nor a file
a cold listing showed, holds one; ``Remote`` holds its ETag, size, time
and digest in one bytes object; ``Attrs`` shares its mode, uid and gid
ints.  The bounds below fail on the code before (its inode, ``FileState``,
``Remote`` and ``Attrs`` objects), and everything dropped comes back on use.
"""

from __future__ import annotations

import gc
import os
import tracemalloc

import trio

from cosencfs.fs.attrs import Attrs, Kind
from cosencfs.fs.core import Filesystem
from cosencfs.fs.inode import ROOT_INO, FileState, Inode, InodeTable, Remote
from tests.fs.test_filesystem import read_file
from tests.fs.test_memory_per_file import _FILTERS, traced_new_files
from tests.testlib import FsFactory

#: Bytes per file allocated in the inode's modules (fs/inode.py, fs/remote.py,
#: fs/attrs.py, the namespace's tables) for an uploaded file whose copy is
#: evicted: ~960 before this cut (the inode 176 and its table entries,
#: ``FileState`` 96 and its record id, ``Remote`` 88 with its ETag bytes,
#: size, time and digest, ``Attrs`` 96 with two time ints and a mode int),
#: ~600 after.
INODE_BYTES_PER_EVICTED_FILE = 400
#: The same for a file a cold listing of a second mount showed and ``ls -l``
#: looked up: ~640 before (``FileState``, ``Remote``'s parts, the mode int),
#: ~450 after.
INODE_BYTES_PER_LISTED_FILE = 600
_INODE_FILES = ("/fs/inode.py", "/fs/remote.py", "/fs/attrs.py", "/fs/listing.py", "/fs/parts.py")


def _inode_bytes(after: tracemalloc.Snapshot, base: tracemalloc.Snapshot) -> int:
    held = 0
    for s in after.compare_to(base, "filename"):
        name = s.traceback[0].filename
        if any(name.endswith(f) for f in _INODE_FILES):
            held += s.size_diff
    return held


async def _ls_l(fs: Filesystem, d: int) -> list[int]:
    dh = await fs.opendir(d)
    try:
        names = [name for name, _, _ in fs.readdir(dh, 0)]
    finally:
        await fs.releasedir(dh)
    inos = []
    for name in names:
        ino = (await fs.lookup(d, name)).ino
        await fs.getattr(ino)
        inos.append(ino)
    return inos


async def test_created_and_listed_files_hold_small_inodes(make_fs: FsFactory) -> None:
    n = 300
    async with traced_new_files(make_fs, n, frames=4) as new:
        fs, inos, data = new.fs, new.inos, new.data
        created = _inode_bytes(new.after, new.base) / n
        compact = sum(1 for i in inos if fs.ns.inode(i).held_file is None)

        fs2 = await make_fs()
        d2 = (await fs2.lookup(ROOT_INO, b"d")).ino
        gc.collect()
        base = tracemalloc.take_snapshot().filter_traces(_FILTERS)
        listed_inos = await _ls_l(fs2, d2)
        gc.collect()
        after = tracemalloc.take_snapshot().filter_traces(_FILTERS)
        listed = _inode_bytes(after, base) / len(listed_inos)
    assert compact >= n - 8, compact
    assert created < INODE_BYTES_PER_EVICTED_FILE, f"{created:.0f} bytes per created file"
    assert len(listed_inos) == n + 1
    assert all(fs2.ns.inode(i).held_file is None for i in listed_inos)
    assert listed < INODE_BYTES_PER_LISTED_FILE, f"{listed:.0f} bytes per listed file"
    # What was dropped comes back on use, on both mounts.
    node = fs.ns.inode(inos[9])
    assert (await fs.getattr(inos[9])).size == 2048
    assert node.held_file is None  # (asking for the size makes no state)
    assert await read_file(fs, inos[9]) == data
    assert await read_file(fs2, listed_inos[3]) == data
    # A write after the compaction sees the size the state was dropped with.
    fh, _ = await fs.open(inos[11], os.O_WRONLY | os.O_APPEND)
    await fs.write(fh, 2048, b"tail")
    await fs.release(fh)
    await fs.sync_all()
    assert await read_file(fs, inos[11]) == data + b"tail"
    assert (await fs.getattr(inos[11])).size == 2052


def _held(node: Inode) -> FileState | None:
    """(A call, so that the checker does not narrow the property between asserts.)"""
    return node.held_file


def _lock(node: Inode) -> object:
    return node._upload_lock


def _stored(r: Remote) -> bool:
    return r.stored


def _file(size: int = 5) -> Inode:
    table = InodeTable(Attrs(0o40755, 0, 0, 1, 1, 1))
    node = table.new(Kind.FILE, table.root, "f", Attrs(0o100644, 0, 0, 1, 1, 1))
    node.adopt_remote(Remote("532abfa6ad85556c54e91c30e4ac4908", size, 1.5))
    return node


def test_a_compacted_file_state_comes_back_with_its_size() -> None:
    node = _file(5)
    assert _held(node) is None  # (a listed entry: none made)
    assert node.current_size == 5
    f = node.file
    assert isinstance(f, FileState)
    assert f.size == 5
    assert _held(node) is f
    f.open_count = 1
    assert not node.compact_file()  # open
    f.open_count = 0
    f.journaled = object()
    assert not node.compact_file()  # a journal record
    f.journaled = None
    f.size = 7
    assert not node.compact_file()  # not the object's size
    f.size = 5
    assert node.compact_file()
    assert _held(node) is None
    assert node.file is not f
    assert node.as_file.size == 5
    assert node.compact_file()
    # Another remote of another size does not change the file's size behind its back.
    node.remote = Remote("e2", 9, 2.0)
    assert _held(node) is not None
    assert node.as_file.size == 5
    # ... nor one of the same size, which keeps no state either.
    node.as_file.size = 9
    assert node.compact_file()
    node.remote = Remote("e3", 9, 3.0)
    assert _held(node) is None
    assert node.current_size == 9
    node.remote = None
    assert node.as_file.size == 9
    # A directory has none, and never one made.
    table = InodeTable(Attrs(0o40755, 0, 0, 1, 1, 1))
    sub = table.new(Kind.DIR, table.root, "d", Attrs(0o40755, 0, 0, 1, 1, 1))
    assert sub.file is None
    assert _held(sub) is None
    assert sub.current_size == 0
    assert not sub.compact_file()


async def test_no_compaction_while_an_upload_lock_or_a_head_is_under_way() -> None:
    node = _file()
    node.file  # noqa: B018  (made)
    async with node.upload_lock:
        assert _lock(node) is not None
        assert not node.compact_file()
    assert node._aux is None
    assert _lock(node) is None
    node.attrs_loading = trio.Event()
    assert not node.compact_file()
    node.attrs_loading = None
    assert node._aux is None
    assert node.compact_file()


def test_inode_flags_read_as_set() -> None:
    node = _file()
    assert not node.attrs_known
    assert not node.unlinked
    node.attrs_known = True
    node.unlinked = True
    assert node.attrs_known
    assert node.unlinked
    node.attrs_known = False
    assert not node.attrs_known
    assert node.unlinked
    node.unlinked = False
    assert not node.unlinked


def test_remote_fields_read_as_given() -> None:
    r = Remote("532abfa6ad85556c54e91c30e4ac4908", 2**40 + 3, 1700000000.25, {"mode": "1"})
    assert (r.etag, r.size, r.last_modified) == (
        "532abfa6ad85556c54e91c30e4ac4908",
        2**40 + 3,
        1700000000.25,
    )
    r.size = 7
    r.last_modified = 2.5
    assert (r.etag, r.size, r.last_modified, r.check, r.stored) == (
        "532abfa6ad85556c54e91c30e4ac4908",
        7,
        2.5,
        0,
        False,
    )
    r.etag = "not-md5-\u00e9"
    assert r.etag == "not-md5-\u00e9"
    assert r.size == 7
    assert r.last_modified == 2.5
    node = _file()

    class _Loader:
        def load(self, n: Inode, remote: Remote) -> dict[str, str] | None:
            return {"mode": "loaded"}

    r.store(node, _Loader(), 2**60 - 1)
    assert _stored(r)
    assert r.check == 2**60 - 1
    assert r.metadata == {"mode": "loaded"}
    assert r.etag == "not-md5-\u00e9"
    assert r.size == 7
    r.metadata = {"mode": "2"}
    assert not _stored(r)
    assert r.metadata == {"mode": "2"}


def test_attrs_share_their_mode_uid_and_gid() -> None:
    a = Attrs(int("100644", 8), int("1000"), int("1001"), 1, 1, 1)
    b = Attrs(int("100644", 8), int("1000"), int("1001"), 2, 2, 2)
    assert a.mode is b.mode
    assert a.uid is b.uid
    assert a.gid is b.gid
    assert (b.mode, b.uid, b.gid) == (0o100644, 1000, 1001)


def _times(a: Attrs) -> object:
    return a._times


def test_attrs_times_read_as_set() -> None:
    t = 1_700_000_000_123_456_789
    a = Attrs(0o100644, 0, 0, t, t, t)
    assert type(_times(a)) is int  # (equal: one int)
    a.mtime_ns = a.ctime_ns = t + 5
    assert (a.mtime_ns, a.ctime_ns, a.atime_ns) == (t + 5, t + 5, t)
    assert type(_times(a)) is bytes  # (one object for the three)
    a.atime_ns = -7
    assert (a.mtime_ns, a.ctime_ns, a.atime_ns) == (t + 5, t + 5, -7)
    a.ctime_ns = 2**70  # (beyond 64 bits: kept as given)
    assert (a.mtime_ns, a.ctime_ns, a.atime_ns) == (t + 5, 2**70, -7)
    a.mtime_ns = a.ctime_ns = a.atime_ns = t
    assert a == Attrs(0o100644, 0, 0, t, t, t)
    assert a != Attrs(0o100644, 0, 0, t, t, t + 1)
