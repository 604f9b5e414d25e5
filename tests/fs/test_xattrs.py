"""user.* extended attributes in the filesystem layer: sealed, tagged, one copy per change."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable
from pathlib import Path

import pytest

from cosencfs.cache.manager import CacheManager
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.xattrseal import XATTR_FIELD
from cosencfs.errors import FsError
from cosencfs.fs.core import Filesystem
from cosencfs.fs.inode import ROOT_INO
from cosencfs.fs.xattrs import loaded
from cosencfs.store.cos import CosStore
from tests.fs.test_filesystem import write_file as _write_file
from tests.testlib import FsFactory, fs_options


async def _errno(aw: Awaitable[object]) -> int:
    with pytest.raises(FsError) as info:
        await aw
    return info.value.errno


class _Made:
    def __init__(self, ino: int) -> None:
        self.ino = ino


async def write_file(fs: Filesystem, parent: int, name: str, data: bytes) -> _Made:
    return _Made(await _write_file(fs, parent, name, data))


def _requests(store: CosStore, before: object) -> dict[str, int]:
    return dict(store.counters.snapshot().minus(before).requests)  # type: ignore[arg-type]


async def test_set_get_list_remove_on_file_and_directory(
    make_fs: FsFactory, store: CosStore
) -> None:
    fs = await make_fs()
    f = await write_file(fs, ROOT_INO, "f", b"hello")
    d = await fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
    for ino in (f.ino, d.ino):
        await fs.setxattr(ino, b"user.a", b"1")
        await fs.setxattr(ino, b"user.b", b"\x00" * 100)
        assert await fs.getxattr(ino, b"user.a") == b"1"
        assert await fs.listxattr(ino) == [b"user.a", b"user.b"]
        await fs.removexattr(ino, b"user.b")
        assert await _errno(fs.getxattr(ino, b"user.b")) == errno.ENODATA
        assert await _errno(fs.removexattr(ino, b"user.b")) == errno.ENODATA
        assert await _errno(fs.setxattr(ino, b"security.x", b"1")) == errno.ENOTSUP
        assert await _errno(fs.setxattr(ino, b"trusted.x", b"1")) == errno.ENOTSUP
        assert await _errno(fs.getxattr(ino, b"system.posix_acl_access")) == errno.ENOTSUP
        assert await _errno(fs.getxattr(ino, b"security.selinux")) == errno.ENOTSUP
        assert await _errno(fs.removexattr(ino, b"trusted.x")) == errno.ENOTSUP
        assert await _errno(fs.setxattr(ino, b"user.cosencfs.x", b"1")) == errno.EPERM
    await fs.sync_all()
    # Names and values are not in the metadata in the clear.
    for key in ("f", "d/"):
        meta = dict((await store.head(key)).metadata)
        assert XATTR_FIELD in meta
        assert "user.a" not in str(meta)
    cold = await make_fs()
    for name in (b"f", b"d"):
        e = await cold.lookup(ROOT_INO, name)
        assert await cold.listxattr(e.ino) == [b"user.a"]
        assert await cold.getxattr(e.ino, b"user.a") == b"1"
    fh = (await cold.open((await cold.lookup(ROOT_INO, b"f")).ino, os.O_RDONLY))[0]
    assert await cold.read(fh, 0, 100) == b"hello"
    await cold.release(fh)


async def test_a_change_on_a_clean_file_is_one_copy(make_fs: FsFactory, store: CosStore) -> None:
    fs = await make_fs()
    f = await write_file(fs, ROOT_INO, "f", os.urandom(1000))
    await fs.sync_all()
    await fs.getattr(f.ino)
    before = store.counters.snapshot()
    await fs.setxattr(f.ino, b"user.origin", b"https://example.org/")
    await fs.sync_all()
    assert _requests(store, before) == {"CopyObject": 1}
    before = store.counters.snapshot()
    await fs.removexattr(f.ino, b"user.origin")
    await fs.sync_all()
    assert _requests(store, before) == {"CopyObject": 1}
    assert XATTR_FIELD not in dict((await store.head("f")).metadata)


async def test_a_dirty_file_carries_them_in_its_upload(make_fs: FsFactory, store: CosStore) -> None:
    fs = await make_fs()
    fh, e = await fs.create(ROOT_INO, b"n", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
    await fs.write(fh, 0, b"x" * 10)
    await fs.setxattr(e.ino, b"user.k", b"v")
    before = store.counters.snapshot()
    await fs.release(fh)
    await fs.sync_all()
    assert _requests(store, before) == {"PutObject": 1}
    cold = await make_fs()
    ce = await cold.lookup(ROOT_INO, b"n")
    assert await cold.getxattr(ce.ino, b"user.k") == b"v"


async def test_rename_reseals_for_the_new_key(make_fs: FsFactory, store: CosStore) -> None:
    fs = await make_fs()
    d = await fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
    f = await write_file(fs, d.ino, "f", b"data")
    await fs.setxattr(f.ino, b"user.a", b"file")
    await fs.setxattr(d.ino, b"user.a", b"dir")
    await fs.sync_all()
    await fs.rename(d.ino, b"f", d.ino, b"g", 0)
    await fs.sync_all()
    await fs.rename(ROOT_INO, b"d", ROOT_INO, b"e", 0)
    await fs.sync_all()
    cold = await make_fs()
    e = await cold.lookup(ROOT_INO, b"e")
    g = await cold.lookup(e.ino, b"g")
    assert await cold.getxattr(e.ino, b"user.a") == b"dir"
    assert await cold.getxattr(g.ino, b"user.a") == b"file"
    assert cold.ctx.tags.attrs_authentic("e/g", dict((await store.head("e/g")).metadata))


async def test_swapped_or_altered_fields_are_dropped_not_served(
    make_fs: FsFactory, store: CosStore
) -> None:
    fs = await make_fs()
    for name in ("a", "b"):
        e = await write_file(fs, ROOT_INO, name, b"same")
        await fs.setxattr(e.ino, b"user.who", name.encode())
    await fs.sync_all()
    ma = dict((await store.head("a")).metadata)
    mb = dict((await store.head("b")).metadata)
    # b's field on a: the attribute tag fails, so do the AEAD's AAD.
    await store.copy("a", "a", metadata={**ma, XATTR_FIELD: mb[XATTR_FIELD]})
    cold = await make_fs()
    a = await cold.lookup(ROOT_INO, b"a")
    assert await cold.listxattr(a.ino) == []
    assert cold.ctx.tags.stats.attribute_failures >= 1
    b = await cold.lookup(ROOT_INO, b"b")
    assert await cold.getxattr(b.ino, b"user.who") == b"b"


async def test_budget_root_and_special_files(make_fs: FsFactory) -> None:
    fs = await make_fs()
    f = await write_file(fs, ROOT_INO, "f", b"x")
    await fs.sync_all()
    assert await _errno(fs.setxattr(f.ino, b"user.big", b"v" * 4000)) == errno.ENOSPC
    await fs.setxattr(f.ino, b"user.ok", b"v" * 600)
    assert await _errno(fs.setxattr(ROOT_INO, b"user.a", b"1")) == errno.ENOTSUP
    assert await _errno(fs.getxattr(ROOT_INO, b"user.a")) == errno.ENODATA
    fifo = await fs.mknod(ROOT_INO, b"p", stat.S_IFIFO | 0o644, 0, 0, 0)
    assert await _errno(fs.setxattr(fifo.ino, b"user.a", b"1")) == errno.EPERM
    assert await fs.listxattr(fifo.ino) == []
    node = fs.ns.inode(f.ino)
    assert loaded(fs.ctx, node)[b"user.ok"] == b"v" * 600


async def test_a_prefix_directory_gets_a_marker(make_fs: FsFactory, store: CosStore) -> None:
    await store.put("p/x", b"", {})
    fs = await make_fs()
    p = await fs.lookup(ROOT_INO, b"p")
    await fs.setxattr(p.ino, b"user.tag", b"t")
    await fs.sync_all()
    assert XATTR_FIELD in dict((await store.head("p/")).metadata)


async def test_journal_keeps_them_for_a_dirty_file(make_fs: FsFactory) -> None:
    fs = await make_fs()
    fh, e = await fs.create(ROOT_INO, b"n", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
    await fs.write(fh, 0, b"x" * 10)
    await fs.setxattr(e.ino, b"user.k", b"v")
    rec = fs.ctx.journal.get_dirty(fs.ns.inode(e.ino).as_file.fid)
    assert rec is not None
    assert XATTR_FIELD in rec.attrs
    await fs.release(fh)


async def test_a_remount_with_the_same_cache_keeps_them_through_chmod(
    make_fs: FsFactory, store: CosStore
) -> None:
    fs = await make_fs(cache="c")
    d = await fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
    f = await write_file(fs, d.ino, "f", b"data")
    await fs.setxattr(d.ino, b"user.d", b"1")
    await fs.setxattr(f.ino, b"user.f", b"2")
    await fs.sync_all()
    make_fs.close(fs)
    for _ in range(2):  # attributes from the journal, then after a chmod each
        again = await make_fs(cache="c")
        d2 = await again.lookup(ROOT_INO, b"d")
        f2 = await again.lookup(d2.ino, b"f")
        await again.setattr(d2.ino, mode=0o700)
        await again.setattr(f2.ino, mode=0o600)
        await again.sync_all()
        cold = await make_fs()
        cd = await cold.lookup(ROOT_INO, b"d")
        cf = await cold.lookup(cd.ino, b"f")
        assert await cold.getxattr(cd.ino, b"user.d") == b"1"
        assert await cold.getxattr(cf.ino, b"user.f") == b"2"
        assert await again.listxattr(d2.ino) == [b"user.d"]
        make_fs.close(again)
    assert XATTR_FIELD in dict((await store.head("d/")).metadata)


async def test_a_crash_keeps_the_xattrs_of_a_dirty_file(
    make_fs: FsFactory, store: CosStore, codec: EnvelopeCodec, tmp_path: Path
) -> None:
    fs = await make_fs(cache="c", writeback_delay=3600.0, max_dirty_age=3600.0)
    fh, e = await fs.create(ROOT_INO, b"n", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
    await fs.write(fh, 0, b"survives")
    await fs.release(fh)  # journaled, not uploaded
    await fs.setxattr(e.ino, b"user.k", b"kept")
    make_fs.close(fs)  # "crash"
    assert [o.key async for page in store.list_all() for o in page.objects] == []
    mgr = CacheManager(tmp_path / "c", store, limit_bytes=1 << 30)
    try:
        report = await Filesystem(store, codec, mgr, fs_options()).recover()
    finally:
        mgr.close()
    assert report.uploaded == ["n"]
    cold = await make_fs()
    n = await cold.lookup(ROOT_INO, b"n")
    assert await cold.getxattr(n.ino, b"user.k") == b"kept"
