"""Directory attribute indexes (cosencfs/fs/dirindex.py, docs/format.md 14), local server.

A cold listing of a directory this mount wrote costs its LIST and one GET;
every way the index can be wrong (an entry rewritten by the SDK or another
mount, deleted behind it, the index forged, truncated, too large, copied to
another directory) falls back to HEADs of exactly the entries concerned,
never to wrong attributes.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from typing import Any

import pytest
import requests
import trio
import trio.testing
from qcloud_cos import CosS3Client

from cosencfs.crypto.dirindex import decode_index, encode_index
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.integrity import TagKey
from cosencfs.errors import FsError
from cosencfs.fs import dirindex
from cosencfs.fs.core import Filesystem
from cosencfs.fs.inode import ROOT_INO
from cosencfs.server import LocalCosServer
from cosencfs.store.base import ListPage
from cosencfs.store.cos import CosStore
from cosencfs.tools.fsck import Finding, Fsck
from tests.fs.test_filesystem import names, write_file
from tests.testlib import BUCKET, FsFactory, sdk_config

N = 12
INDEX = "d/.cosencfs-index"


@pytest.fixture(autouse=True)
def _small_directories_indexed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Indexes for directories of any size here (MIN_FILES is tested on its own)."""
    monkeypatch.setattr(dirindex, "MIN_FILES", 1)


async def _populate(make_fs: FsFactory) -> Filesystem:
    """``d/f00`` .. ``d/f11`` (mode 0640, uid/gid 1000) and ``d``'s index, by one mount."""
    fs1 = await make_fs()
    d = await fs1.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
    for i in range(N):
        await write_file(fs1, d.ino, f"f{i:02d}", os.urandom(100 + i), sync=False)
    await fs1.sync_all()
    return fs1


async def _cold_ls(
    make_fs: FsFactory, store: CosStore, *, allow_plaintext: bool = False
) -> tuple[Filesystem, dict[str, Any], dict[str, int]]:
    """A cold ``ls -l d`` on a fresh mount: its entries and the requests it cost."""
    fs = await make_fs(allow_plaintext=allow_plaintext)
    d = await fs.lookup(ROOT_INO, b"d")
    before = store.counters.snapshot()
    listed = await names(fs, d.ino)
    entries = {n: await fs.lookup(d.ino, n.encode()) for n in listed}
    for e in entries.values():
        await fs.getattr(e.ino)
    return fs, entries, dict(store.counters.snapshot().minus(before).requests)


def _ours(e: Any) -> bool:
    return stat.S_IMODE(e.mode) == 0o640 and e.uid == 1000 and e.gid == 1000


async def test_cold_listing_reads_the_index_not_one_head_per_file(
    make_fs: FsFactory, store: CosStore
) -> None:
    await _populate(make_fs)
    assert (await store.head(INDEX)).size > 0
    fs, entries, spent = await _cold_ls(make_fs, store)
    assert sorted(entries) == [f"f{i:02d}" for i in range(N)]  # the index itself is hidden
    assert spent == {"ListObjects": 1, "GetObject": 1}
    assert all(_ours(e) for e in entries.values())
    assert fs.dirindex.stats.applied == N


async def test_entry_written_by_the_sdk_gets_its_own_head(
    make_fs: FsFactory, store: CosStore, server: LocalCosServer
) -> None:
    await _populate(make_fs)
    with requests.Session() as session:
        client = CosS3Client(sdk_config(server.port), retry=0, session=session)
        meta = {"x-cos-meta-mode": str(stat.S_IFREG | 0o600), "x-cos-meta-uid": "7"}
        await trio.to_thread.run_sync(
            lambda: client.put_object(Bucket=BUCKET, Key="d/f03", Body=b"sdk", Metadata=meta)
        )
    fs, entries, spent = await _cold_ls(make_fs, store, allow_plaintext=True)
    assert spent == {"ListObjects": 1, "GetObject": 1, "HeadObject": 1}
    assert stat.S_IMODE(entries["f03"].mode) == 0o600
    assert entries["f03"].uid == 7
    assert all(_ours(e) for n, e in entries.items() if n != "f03")
    assert fs.dirindex.stats.mismatched == 1


async def test_entry_rewritten_by_another_mount_gets_its_own_head(
    make_fs: FsFactory, store: CosStore
) -> None:
    await _populate(make_fs)
    fs2 = await make_fs()
    fs2.dirindex.writes = False  # a mount writing no index (yet): d's index is stale
    d = await fs2.lookup(ROOT_INO, b"d")
    f = await fs2.lookup(d.ino, b"f05")
    fh, _ = await fs2.open(f.ino, os.O_WRONLY | os.O_TRUNC)
    await fs2.write(fh, 0, b"rewritten")
    await fs2.release(fh)
    # (Content and attributes: a metadata-only rewrite in the same second as
    # the indexed version is the one change no listing shows, docs/semantics.md.)
    await fs2.setattr(f.ino, mode=0o600, uid=4242)
    await write_file(fs2, d.ino, "new", b"new file")
    await fs2.sync_all()
    _, entries, spent = await _cold_ls(make_fs, store)
    assert spent == {"ListObjects": 1, "GetObject": 1, "HeadObject": 2}
    assert stat.S_IMODE(entries["f05"].mode) == 0o600
    assert entries["f05"].uid == 4242
    assert _ours(entries["new"])
    # The next index written in d (by any mount that writes one) covers them again.
    fs3 = await make_fs()
    await _rewrite_index(fs3)
    _, entries, spent = await _cold_ls(make_fs, store)
    assert spent == {"ListObjects": 1, "GetObject": 1}
    assert stat.S_IMODE(entries["f05"].mode) == 0o600
    assert entries["f05"].uid == 4242


async def test_rewrite_carries_entries_over_in_name_order(
    make_fs: FsFactory, store: CosStore, codec: EnvelopeCodec
) -> None:
    """A mount that knows only some entries (the rest came from the index, no
    metadata held) writes the others' old lines back, each at its place:
    the body is the listing's order, the whole directory covered."""
    await _populate(make_fs)
    fs2 = await make_fs()
    d = await fs2.lookup(ROOT_INO, b"d")
    assert len(await names(fs2, d.ino)) == N  # attributes from the index, no HEAD
    # New files between, before and after the carried ones.
    for name in ("f05x", "a", "z"):
        await write_file(fs2, d.ino, name, b"new " + name.encode(), sync=False)
    await fs2.sync_all()
    ours = {codec.key_id: TagKey.from_master(codec.masters[0])}
    entries = list(decode_index(ours, prefix="d/", body=await store.get(INDEX)))
    want = sorted([f"f{i:02d}" for i in range(N)] + ["f05x", "a", "z"])
    assert [e.name for e in entries] == want
    _, listed, spent = await _cold_ls(make_fs, store)
    assert spent == {"ListObjects": 1, "GetObject": 1}
    assert sorted(listed) == want
    assert all(_ours(e) for e in listed.values())


async def test_listing_out_of_order_writes_no_index(
    make_fs: FsFactory, store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index's lines go in the order COS lists (sorted): a listing that
    is not sorted gets no index rather than an unsorted one."""
    fs = await _populate(make_fs)
    before = await store.head(INDEX)
    real = store.list_objects

    async def reversed_page(*args: Any, **kwargs: Any) -> ListPage:
        page = await real(*args, **kwargs)
        return dataclasses.replace(page, objects=list(reversed(page.objects)))

    monkeypatch.setattr(store, "list_objects", reversed_page)
    await _rewrite_index(fs)
    assert (await store.head(INDEX)).etag == before.etag


async def _rewrite_index(fs: Filesystem) -> None:
    d = fs.ns.directory((await fs.lookup(ROOT_INO, b"d")).ino)
    await fs.listings.ensure_listed(d)
    for n in d.as_dir.children.values():
        await fs.getattr(n.ino)
    await fs.dirindex.write(d)


async def test_entry_deleted_behind_the_index_is_gone(make_fs: FsFactory, store: CosStore) -> None:
    await _populate(make_fs)
    await store.delete("d/f07")
    _, entries, spent = await _cold_ls(make_fs, store)
    assert "f07" not in entries
    assert len(entries) == N - 1
    assert spent == {"ListObjects": 1, "GetObject": 1}
    assert all(_ours(e) for e in entries.values())


async def _tampered(make_fs: FsFactory, store: CosStore, body: bytes) -> None:
    """``d``'s index replaced by ``body``: every entry HEADed, attributes right."""
    await store.put(INDEX, body, {})
    fs, entries, spent = await _cold_ls(make_fs, store)
    assert spent == {"ListObjects": 1, "GetObject": 1, "HeadObject": N}
    assert all(_ours(e) for e in entries.values())
    assert fs.dirindex.stats.refused == 1
    assert fs.dirindex.stats.applied == 0


async def test_forged_entry_refuses_the_whole_index(make_fs: FsFactory, store: CosStore) -> None:
    await _populate(make_fs)
    body = await store.get(INDEX)
    forged = body.replace(b'"33184"', b'"36333"', 1)  # 0100640 -> 0106755 (setuid)
    assert forged != body
    await _tampered(make_fs, store, forged)


async def test_index_under_another_key_is_refused(
    make_fs: FsFactory, store: CosStore, codec: EnvelopeCodec
) -> None:
    await _populate(make_fs)
    ours = {codec.key_id: TagKey.from_master(codec.masters[0])}
    entries = list(decode_index(ours, prefix="d/", body=await store.get(INDEX)))
    wrong = TagKey(os.urandom(32))
    await _tampered(
        make_fs, store, encode_index(wrong, kid=codec.key_id, prefix="d/", entries=entries)
    )


async def test_truncated_index_is_refused(make_fs: FsFactory, store: CosStore) -> None:
    await _populate(make_fs)
    body = await store.get(INDEX)
    lines = body.split(b"\n")
    # Whole lines cut off (the MAC line kept): the count and the MAC disagree.
    await _tampered(make_fs, store, b"\n".join(lines[:4] + lines[-2:]))


async def test_index_without_its_mac_is_refused(make_fs: FsFactory, store: CosStore) -> None:
    await _populate(make_fs)
    body = await store.get(INDEX)
    await _tampered(make_fs, store, body[: len(body) // 2])


async def test_index_copied_from_another_directory_is_refused(
    make_fs: FsFactory, store: CosStore
) -> None:
    fs1 = await _populate(make_fs)
    e = await fs1.mkdir(ROOT_INO, b"e", 0o755, 0, 0)
    for i in range(N):
        await write_file(fs1, e.ino, f"f{i:02d}", b"other", sync=False)
    await fs1.sync_all()
    await _tampered(make_fs, store, await store.get("e/.cosencfs-index"))


async def test_index_larger_than_the_bound_is_not_read(
    make_fs: FsFactory, store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _populate(make_fs)
    size = (await store.head(INDEX)).size
    monkeypatch.setattr(dirindex, "MAX_INDEX_BYTES", size - 1)
    _, entries, spent = await _cold_ls(make_fs, store)
    assert spent == {"ListObjects": 1, "HeadObject": N}  # not even fetched
    assert all(_ours(e) for e in entries.values())


async def test_requests_per_new_small_file(make_fs: FsFactory, store: CosStore) -> None:
    """Creating 1000 small files (write-back, then sync) costs at most 1.05 requests
    each, index writes included."""
    n = 1000
    fs = await make_fs()
    before = store.counters.snapshot()
    d = await fs.mkdir(ROOT_INO, b"many", 0o755, 0, 0)
    for i in range(n):
        await write_file(fs, d.ino, f"f{i:04d}", b"x" * 100, sync=False)
    await fs.sync_all()
    spent = store.counters.snapshot().minus(before).requests
    total = sum(spent.values())
    assert spent.get("PutObject", 0) >= n + 1  # n files and the marker
    assert fs.dirindex.stats.written >= 1
    assert total <= 1.05 * n, spent
    print(f"{n} new files: {total} requests {spent}")
    info = await store.head("many/.cosencfs-index")
    assert info.size > 0
    # (The counters are the bucket's: the first mount writes nothing more.)
    fs.dirindex.writes = False
    await fs.dirindex.flush()
    fs2 = await make_fs()
    d2 = await fs2.lookup(ROOT_INO, b"many")
    before = store.counters.snapshot()
    assert len(await names(fs2, d2.ino)) == n
    # Two LIST pages (1000 files, the marker and the index), one GET.
    spent = store.counters.snapshot().minus(before).requests
    assert spent == {"ListObjects": 2, "GetObject": 1}, spent


async def test_reserved_name_rmdir_and_rename(fsys: Filesystem, store: CosStore) -> None:
    d = await fsys.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
    with pytest.raises(FsError) as exc:
        await fsys.create(d.ino, b".cosencfs-index", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
    assert exc.value.errno == errno.EPERM
    with pytest.raises(FsError) as exc:
        await fsys.lookup(d.ino, b".cosencfs-index")
    assert exc.value.errno == errno.ENOENT
    await write_file(fsys, d.ino, "a", b"a", sync=False)
    await fsys.sync_all()
    assert (await store.head(INDEX)).size > 0
    # A renamed directory's index is bound to the old prefix: deleted, not copied.
    await fsys.rename(ROOT_INO, b"d", ROOT_INO, b"e", 0)
    keys = [o.key async for page in store.list_all("") for o in page.objects]
    assert "e/.cosencfs-index" not in keys
    assert INDEX not in keys
    # rmdir removes an index too, so the prefix does not live on.
    await fsys.unlink(d.ino, b"a")
    await write_file(fsys, d.ino, "b", b"b", sync=False)
    await fsys.sync_all()
    assert (await store.head("e/.cosencfs-index")).size > 0
    await fsys.unlink(d.ino, b"b")
    await fsys.rmdir(ROOT_INO, b"e")
    await fsys.sync_all()
    assert [o.key async for page in store.list_all("") for o in page.objects] == []


async def test_small_directories_get_no_index(
    make_fs: FsFactory, store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dirindex, "MIN_FILES", N + 1)
    await _populate(make_fs)
    keys = [o.key async for page in store.list_all("d/") for o in page.objects]
    assert INDEX not in keys
    assert len(keys) == N + 1
    monkeypatch.setattr(dirindex, "MIN_FILES", N)
    fs = await make_fs()
    d = await fs.lookup(ROOT_INO, b"d")
    await write_file(fs, d.ino, "one-more", b"x", sync=False)
    await fs.sync_all()
    fs, entries, spent = await _cold_ls(make_fs, store)
    # The first index covers what its mount knew: the file it wrote.
    assert spent == {"ListObjects": 1, "GetObject": 1, "HeadObject": N}
    assert len(entries) == N + 1
    # That cold ls -l had to HEAD them: a rewrite of the index is due.
    assert fs.dirindex.pending == 1
    await fs.dirindex.flush()
    _, entries, spent = await _cold_ls(make_fs, store)
    assert spent == {"ListObjects": 1, "GetObject": 1}
    assert all(_ours(e) for e in entries.values())


async def test_fsck_skips_indexes(
    make_fs: FsFactory, store: CosStore, codec: EnvelopeCodec
) -> None:
    await _populate(make_fs)
    assert (await store.head(INDEX)).size > 0
    found: list[Finding] = []
    await Fsck(store, codec, report=found.append, verify=True).run()
    assert found == []


async def test_sync_waits_for_an_index_rewrite_the_background_began(
    make_fs: FsFactory, store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cosencfs sync` (and unmount) return only once a rewrite the background
    writer already took from its queue has ended: nothing of the mount is
    still on its way to COS after them."""
    fs = await _populate(make_fs)
    d = fs.ns.directory((await fs.lookup(ROOT_INO, b"d")).ino)
    started, go_on = trio.Event(), trio.Event()
    put = fs.ctx.store.put

    async def held(key: str, *args: Any, **kw: Any) -> str:
        if key == INDEX:
            started.set()
            await go_on.wait()
        return await put(key, *args, **kw)

    monkeypatch.setattr(fs.ctx.store, "put", held)
    monkeypatch.setattr(dirindex, "QUIET", 0.0)
    fs.dirindex.changed(d)  # due at once: the background writer takes it
    with trio.fail_after(30):
        await started.wait()
    assert fs.dirindex.pending == 0
    synced = trio.Event()

    async def sync() -> None:
        await fs.sync_all()
        synced.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync)
        await trio.testing.wait_all_tasks_blocked()
        assert not synced.is_set()  # the index is still on its way
        go_on.set()
    assert synced.is_set()
