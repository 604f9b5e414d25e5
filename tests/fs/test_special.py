"""Fifos, sockets and device nodes in the filesystem layer, without FUSE.

Each is one empty object whose mode carries the type (cosfs, s3fs), with
``rdev`` for devices, and an attribute tag over an empty object tag: every
operation on every type, what it costs, what a cold mount sees, and which
device nodes a ``-o dev`` mount shows as devices.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest

from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.integrity import ATTR_TAG_FIELD, OBJECT_TAG_FIELD
from cosencfs.errors import FsError
from cosencfs.fs.core import Filesystem
from cosencfs.fs.entry import Entry
from cosencfs.fs.inode import ROOT_INO
from cosencfs.fs.tagcheck import COMPANION_DIR, attr_set
from cosencfs.store.cos import CosStore
from cosencfs.store.counters import CounterSnapshot
from tests.fs.test_filesystem import write_file
from tests.testlib import FsFactory

TYPES = {
    "fifo": (stat.S_IFIFO, 0),
    "sock": (stat.S_IFSOCK, 0),
    "chr": (stat.S_IFCHR, os.makedev(1, 3)),
    "blk": (stat.S_IFBLK, os.makedev(8, 17)),
}


async def stat_of(fs: Filesystem, name: str, parent: int = ROOT_INO) -> Entry:
    entry = await fs.lookup(parent, name.encode())
    return await fs.getattr(entry.ino)


async def make_all(fs: Filesystem, parent: int = ROOT_INO) -> dict[str, Entry]:
    return {
        name: await fs.mknod(parent, name.encode(), ftype | 0o640, rdev, 1000, 100)
        for name, (ftype, rdev) in TYPES.items()
    }


def puts(store: CosStore, before: CounterSnapshot) -> dict[str, int]:
    return dict(store.counters.snapshot().minus(before).requests)


async def test_mknod_is_one_put_of_an_empty_object_per_file(
    fsys: Filesystem, store: CosStore
) -> None:
    before = store.counters.snapshot()
    made = await make_all(fsys)
    # Checking the name is free costs a listing of the root, once.
    assert puts(store, before).get("PutObject") == len(TYPES)
    assert set(puts(store, before)) <= {"PutObject", "ListObjects"}
    for name, (ftype, rdev) in TYPES.items():
        e = made[name]
        assert stat.S_IFMT(e.mode) == ftype
        assert stat.S_IMODE(e.mode) == 0o640
        assert (e.uid, e.gid, e.size, e.nlink) == (1000, 100, 0, 1)
        assert e.rdev == rdev
        info = await store.head(name)
        assert info.size == 0
        meta = dict(info.metadata)
        assert int(meta["mode"]) == ftype | 0o640
        assert ("rdev" in meta) == (rdev != 0)
        if rdev:
            assert int(meta["rdev"]) == rdev
        # No body, so no envelope and no object tag; an attribute tag.
        assert not any(k.startswith("client-side-encryption") for k in meta)
        assert OBJECT_TAG_FIELD not in meta
        assert ATTR_TAG_FIELD in meta
        assert fsys.ctx.tags.attrs_authentic(name, meta)
        assert await store.get(name) == b""


async def test_a_cold_mount_sees_types_modes_owners_times_and_rdev(make_fs: FsFactory) -> None:
    fs = await make_fs()
    made = await make_all(fs)
    cold = await make_fs()
    for name, e in made.items():
        got = await stat_of(cold, name)
        assert (got.mode, got.uid, got.gid, got.mtime_ns, got.rdev, got.size) == (
            e.mode,
            e.uid,
            e.gid,
            e.mtime_ns,
            e.rdev,
            0,
        ), name
    listing_fh = await cold.opendir(ROOT_INO)
    kinds = {n.decode(): stat.S_IFMT(e.mode) for n, e, _ in cold.readdir(listing_fh, 0)}
    await cold.releasedir(listing_fh)
    assert kinds == {name: t for name, (t, _) in TYPES.items()}


async def test_chmod_chown_utimens_are_one_put_each_and_stay_tagged(
    make_fs: FsFactory, store: CosStore
) -> None:
    fs = await make_fs()
    made = await make_all(fs)
    before = store.counters.snapshot()
    for i, e in enumerate(made.values()):
        await fs.setattr(e.ino, mode=0o600, uid=2000 + i, gid=300, mtime_ns=1_700_000_000_123)
    await fs.sync_all()
    assert puts(store, before) == {"PutObject": len(TYPES)}
    cold = await make_fs()
    for i, name in enumerate(made):
        got = await stat_of(cold, name)
        assert stat.S_IFMT(got.mode) == TYPES[name][0]
        assert stat.S_IMODE(got.mode) == 0o600
        assert (got.uid, got.gid, got.mtime_ns, got.rdev) == (
            2000 + i,
            300,
            1_700_000_000_123,
            TYPES[name][1],
        )
        meta = dict((await store.head(name)).metadata)
        assert cold.ctx.tags.attrs_authentic(name, meta)


async def test_rename_moves_each_type_with_its_tag(make_fs: FsFactory, store: CosStore) -> None:
    fs = await make_fs()
    await make_all(fs)
    d = await fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
    for name in TYPES:
        await fs.rename(ROOT_INO, name.encode(), d.ino, f"{name}2".encode(), 0)
    await fs.sync_all()
    # Renamed again, with the directory: copies re-tagged for the new keys.
    await fs.rename(ROOT_INO, b"d", ROOT_INO, b"e", 0)
    await fs.sync_all()
    keys = {o.key async for page in store.list_all("") for o in page.objects}
    assert {f"e/{n}2" for n in TYPES} <= keys
    assert not any(k in keys for k in TYPES)
    cold = await make_fs()
    e = await cold.lookup(ROOT_INO, b"e")
    for name, (ftype, rdev) in TYPES.items():
        got = await stat_of(cold, f"{name}2", e.ino)
        assert (stat.S_IFMT(got.mode), got.rdev, got.uid) == (ftype, rdev, 1000)
        meta = dict((await store.head(f"e/{name}2")).metadata)
        assert cold.ctx.tags.attrs_authentic(f"e/{name}2", meta)


async def test_rename_over_a_file_and_unlink(make_fs: FsFactory, store: CosStore) -> None:
    fs = await make_fs()
    await make_all(fs)
    # Large enough for its chunk tags to live in a companion object.
    await write_file(fs, ROOT_INO, "victim", os.urandom(3 * 1024 * 1024))
    await fs.sync_all()
    keys = {o.key async for page in store.list_all("") for o in page.objects}
    assert any(k.startswith(COMPANION_DIR) for k in keys)
    await fs.rename(ROOT_INO, b"fifo", ROOT_INO, b"victim", 0)
    assert stat.S_ISFIFO((await stat_of(fs, "victim")).mode)
    for name in ("victim", "sock", "chr", "blk"):
        await fs.unlink(ROOT_INO, name.encode())
    await fs.sync_all()
    # The companion of the file the fifo replaced went too.
    assert [o.key async for page in store.list_all("") for o in page.objects] == []
    with pytest.raises(FsError) as info:
        await fs.lookup(ROOT_INO, b"chr")
    assert info.value.errno == errno.ENOENT


async def test_open_truncate_and_unknown_types(fsys: Filesystem) -> None:
    made = await make_all(fsys)
    for e in made.values():
        with pytest.raises(FsError) as info:
            await fsys.open(e.ino, os.O_RDONLY)
        assert info.value.errno == errno.ENXIO  # the kernel opens them itself
        with pytest.raises(FsError) as info:
            await fsys.setattr(e.ino, size=0)
        assert info.value.errno == errno.EINVAL
    with pytest.raises(FsError) as info:
        await fsys.mknod(ROOT_INO, b"fifo", stat.S_IFIFO | 0o644, 0, 0, 0)
    assert info.value.errno == errno.EEXIST
    # mknod of a regular file makes an empty one, as create() would.
    e = await fsys.mknod(ROOT_INO, b"plain", stat.S_IFREG | 0o644, 0, 0, 0)
    assert stat.S_ISREG(e.mode)


async def test_device_nodes_on_dev_mounts_need_their_attribute_tag(
    make_fs: FsFactory, store: CosStore
) -> None:
    fs = await make_fs()
    await make_all(fs)
    # Someone without the key: an untagged device node, and a tagged one
    # whose rdev was changed (the attribute tag covers it).
    await store.put("foreign", b"", {"mode": str(stat.S_IFCHR | 0o666), "rdev": "259"})
    meta = dict((await store.head("chr")).metadata)
    await store.put("altered", b"", {**meta, "rdev": str(os.makedev(1, 1))})
    await store.put("moved", b"", meta)  # the tag binds the name "chr"
    nodev = await make_fs()
    foreign = await stat_of(nodev, "foreign")
    assert stat.S_ISCHR(foreign.mode)  # inert on nodev: shown as it is
    assert foreign.rdev == 259
    for name in ("altered", "moved"):
        # A failing attribute tag: default attributes, a regular file.
        assert stat.S_ISREG((await stat_of(nodev, name)).mode)
    dev = await make_fs(devices=True)
    assert stat.S_ISCHR((await stat_of(dev, "chr")).mode)
    assert stat.S_ISBLK((await stat_of(dev, "blk")).mode)
    assert stat.S_ISREG((await stat_of(dev, "foreign")).mode)
    for name in ("altered", "moved"):
        assert stat.S_ISREG((await stat_of(dev, name)).mode)
    # A chmod or a rename through the mount does not bless an untagged one.
    e = await nodev.lookup(ROOT_INO, b"foreign")
    await nodev.setattr(e.ino, mode=0o600)
    await nodev.rename(ROOT_INO, b"foreign", ROOT_INO, b"foreign2", 0)
    await nodev.sync_all()
    assert ATTR_TAG_FIELD not in (await store.head("foreign2")).metadata
    dev2 = await make_fs(devices=True)
    assert stat.S_ISREG((await stat_of(dev2, "foreign2")).mode)


async def test_special_file_with_content_is_a_refused_regular_file(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec
) -> None:
    await store.put("fat-fifo", b"data", {"mode": str(stat.S_IFIFO | 0o644)})
    e = await stat_of(fsys, "fat-fifo")
    assert stat.S_ISREG(e.mode)
    assert e.size == 4


def test_attr_set_covers_rdev_only_when_present() -> None:
    base = {"mode": str(stat.S_IFCHR | 0o600), "uid": "1", "gid": "2", "mtime": "3"}
    assert attr_set(base).rdev is None
    assert attr_set({**base, "rdev": "259"}).rdev == 259
    assert attr_set({**base, "rdev": "0"}).rdev == 0
    assert attr_set({**base, "rdev": "0"}).encode() != attr_set(base).encode()
    with pytest.raises(ValueError, match="invalid literal"):
        attr_set({**base, "rdev": "x"})
