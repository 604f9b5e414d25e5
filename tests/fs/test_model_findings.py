"""Regressions found by the Filesystem model test (tests/model/test_fs_model.py),
or by reading the code while hunting with it (docs/reliability.md says which).

Each replays its sequence deterministically; where two tasks race, a request
is held until the operation it raced has done its part (or, when the fix makes
that operation wait for the request, for a second).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio
import trio.testing

from cosencfs.errors import TransientError
from cosencfs.fs import dirindex
from cosencfs.fs.core import Filesystem
from cosencfs.store.cos import CosStore
from tests.fs.test_filesystem import (
    ROOT,
    chmod_with_marker_put_held,
    names,
    read_file,
    write_file,
)
from tests.testlib import FsFactory


async def test_rmdir_during_its_marker_upload_does_not_bring_the_directory_back(
    make_fs: FsFactory, store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory's marker upload (a chmod going up in the background) racing
    its rmdir: rmdir waits for the upload (it takes the directory's upload lock,
    as unlink does a file's), so its delete comes after the marker's PUT, and
    an upload that has not started yet sees the directory gone.  Without that,
    the PUT landed after the delete and the removed directory was back for the
    next mount (a resurrected name).  The PUT is held until the marker's
    delete is done, or for a second when rmdir waits."""
    deleted = trio.Event()
    fs, node = await chmod_with_marker_put_held(make_fs, store, monkeypatch, b"b", 0o40700, deleted)
    real_delete_many = store.delete_many

    async def delete_many(keys: Any) -> Any:
        failures = await real_delete_many(keys)
        if "b/" in keys:
            deleted.set()
        return failures

    monkeypatch.setattr(store, "delete_many", delete_many)

    async def rmdir_and_delete() -> None:
        await fs.rmdir(ROOT, b"b")
        await fs.ctx.deleter.flush()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.writeback.flush, node)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(rmdir_and_delete)
    monkeypatch.undo()
    await fs.sync_all()
    await fs.ctx.deleter.flush()
    assert [o.key async for page in store.list_all("b/") for o in page.objects] == []
    fresh = await make_fs()
    assert await names(fresh, ROOT) == []


async def test_a_directory_listed_again_keeps_its_chmod_not_yet_uploaded(
    make_fs: FsFactory,
) -> None:
    """A directory's own listing sees its marker (an ETag or date other than the
    one it remembers: a marker put here has no date, a rename copies it) and
    used to take its attributes to be unknown: the next getattr HEADed the
    marker and took its mode as clean, so a chmod not yet uploaded was lost
    (dir_ttl 0, lazy upload)."""
    fs = await make_fs(dir_ttl=0.0, writeback_delay=3600.0, max_dirty_age=3600.0)
    await fs.mkdir(ROOT, b"b", 0o700, 0, 0)
    ino = (await fs.lookup(ROOT, b"b")).ino
    await fs.setattr(ino, mode=0o40640)
    assert await names(fs, ino) == []
    assert oct((await fs.getattr(ino)).mode) == oct(0o40640)
    await fs.sync_all()
    fresh = await make_fs()
    entry = await fresh.getattr((await fresh.lookup(ROOT, b"b")).ino)
    assert oct(entry.mode) == oct(0o40640)


async def test_a_file_unlinked_open_reads_its_object_after_its_directory_is_renamed(
    make_fs: FsFactory,
) -> None:
    """A file unlinked while open keeps its object (its delete waits for the last
    close) at the name it had; renaming its old directory afterwards must not
    send its reads and writes to the directory's new name, where there is no
    such object (its integrity tags bind the old name: they failed, EIO)."""
    fs = await make_fs(writeback_delay=3600.0, max_dirty_age=3600.0)
    d = (await fs.mkdir(ROOT, b"b", 0o755, 0, 0)).ino
    body = bytes(range(256)) * 64
    ino = await write_file(fs, d, "f", body)
    fh, _ = await fs.open(ino, os.O_RDWR)
    await fs.unlink(d, b"f")
    await fs.rename(ROOT, b"b", ROOT, b"c", 0)
    assert await fs.write(fh, 1, b"X") == 1
    got = b""
    while chunk := await fs.read(fh, len(got), 4096):
        got += chunk
    assert got == body[:1] + b"X" + body[2:]
    await fs.flush(fh)
    await fs.release(fh)
    await fs.ctx.deleter.flush()
    assert [o.key async for page in fs.ctx.store.list_all("") for o in page.objects] == ["c/"]


async def test_a_directory_renamed_over_a_removed_one_keeps_its_new_files(
    make_fs: FsFactory,
) -> None:
    """A directory renamed onto a name whose files' deletes are still queued
    (``c/x`` unlinked, ``c`` removed a moment before): a file of the moved
    directory not uploaded yet goes up to ``c/x`` later, and the old queued
    delete of ``c/x`` must not remove it (the rename settles the new key of
    every node it moves, not only those of the objects it copies)."""
    fs = await make_fs(writeback_delay=3600.0, max_dirty_age=3600.0)
    fs.ctx.deleter.delay = 3600.0  # queued deletes go when flushed
    c = (await fs.mkdir(ROOT, b"c", 0o755, 0, 0)).ino
    await write_file(fs, c, "x", b"old")
    a = (await fs.mkdir(ROOT, b"a", 0o755, 0, 0)).ino
    ino = await write_file(fs, a, "x", b"new", sync=False)
    await fs.unlink(c, b"x")
    await fs.rmdir(ROOT, b"c")
    await fs.rename(ROOT, b"a", ROOT, b"c", 0)
    node = fs.ctx.table.get(ino)
    assert node is not None
    await fs.writeback.flush(node)
    await fs.ctx.deleter.flush()
    fresh = await make_fs()
    d = (await fresh.lookup(ROOT, b"c")).ino
    assert await names(fresh, d) == ["x"]
    assert await read_file(fresh, (await fresh.lookup(d, b"x")).ino) == b"new"


async def test_rmdir_during_the_first_index_write_does_not_bring_the_directory_back(
    make_fs: FsFactory, store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory's first attribute index (cosencfs/fs/dirindex.py) being
    written while the directory is emptied and removed: rmdir did not know of
    the index (not seen yet) and did not delete it, and the PUT landing after
    it left ``d/.cosencfs-index``, a prefix that brought ``d`` back.  The index
    is written under the directory's upload lock, which rmdir takes too.  The
    index PUT is held until the rmdir is done, or for a second when it waits."""
    monkeypatch.setattr(dirindex, "MIN_FILES", 1)
    fs = await make_fs(writeback_delay=3600.0, max_dirty_age=3600.0)
    d = (await fs.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
    await write_file(fs, d, "a", b"a")  # fsync: committed, the index is due
    removed = trio.Event()
    real_put = store.put

    async def put(key: str, *args: Any, **kw: Any) -> str:
        if key == "d/.cosencfs-index":
            with trio.move_on_after(1.0):
                await removed.wait()
        return await real_put(key, *args, **kw)

    monkeypatch.setattr(store, "put", put)

    async def remove() -> None:
        await fs.unlink(d, b"a")
        await fs.rmdir(ROOT, b"d")
        await fs.ctx.deleter.flush()
        removed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.dirindex.flush)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(remove)
    await fs.ctx.deleter.flush()
    assert [o.key async for page in store.list_all("") for o in page.objects] == []
    fresh = await make_fs()
    assert await names(fresh, ROOT) == []


async def test_the_last_close_of_an_unlinked_file_deletes_only_its_own_object(
    make_fs: FsFactory, store: CosStore
) -> None:
    """``x`` unlinked while open (its delete held), a new ``x`` created (it takes
    the held delete over), uploaded, and unlinked while open in turn: the first
    file's last close must not delete the second one's object, which its
    descriptor still reads."""
    fs = await make_fs(writeback_delay=3600.0, max_dirty_age=3600.0)
    first = await write_file(fs, ROOT, "x", b"one")
    fh1, _ = await fs.open(first, os.O_RDONLY)
    await fs.unlink(ROOT, b"x")
    second = await write_file(fs, ROOT, "x", b"two")
    etag = (await store.head("x")).etag
    fh2, _ = await fs.open(second, os.O_RDONLY)
    await fs.unlink(ROOT, b"x")
    await fs.release(fh1)
    await fs.ctx.deleter.flush()
    assert (await store.head("x")).etag == etag  # still there for fh2
    assert await fs.read(fh2, 0, 100) == b"two"
    await fs.release(fh2)
    await fs.ctx.deleter.flush()
    assert [o.key async for page in store.list_all("") for o in page.objects] == []


async def test_a_file_renamed_over_a_held_delete_answers_for_the_old_object(
    make_fs: FsFactory, store: CosStore
) -> None:
    """``e`` unlinked while open (its delete held), then a file not uploaded yet
    renamed onto ``e``: the rename takes the held delete over (as a create at the
    name does), so unlinking the renamed file before its upload deletes the old
    object; it stayed in COS, and ``e`` came back (model test hunt, seed
    2647017771)."""
    fs = await make_fs(writeback_delay=3600.0, max_dirty_age=3600.0)
    first = await write_file(fs, ROOT, "e", b"one")
    fh, _ = await fs.open(first, os.O_RDONLY)
    await fs.unlink(ROOT, b"e")
    await write_file(fs, ROOT, "a", b"two", sync=False)
    await fs.rename(ROOT, b"a", ROOT, b"e", 0)
    await fs.unlink(ROOT, b"e")
    await fs.release(fh)
    await fs.sync_all()
    await fs.ctx.deleter.flush()
    assert [o.key async for page in store.list_all("") for o in page.objects] == []


async def _rename_refused_then_close(
    fs: Filesystem,
    store: CosStore,
    monkeypatch: pytest.MonkeyPatch,
    old: bytes,
    new: bytes,
    fh: int,
) -> list[str]:
    """Rename ``old`` onto ``new`` with every copy refused, then close ``fh``
    (the unlinked file) and send the deletes: the keys left in the bucket."""

    async def copy(*args: Any, **kw: Any) -> str:
        raise TransientError("copy refused (test)")

    monkeypatch.setattr(store, "copy", copy)
    with pytest.raises(TransientError):
        await fs.rename(ROOT, old, ROOT, new, 0)
    monkeypatch.undo()
    await fs.release(fh)
    await fs.ctx.deleter.flush()
    return [o.key async for page in store.list_all("") for o in page.objects]


async def test_a_failed_rename_over_a_held_delete_holds_it_again(
    make_fs: FsFactory, store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename onto the name of a file unlinked while open takes its held
    delete over before copying; when the copy fails, the delete is held again,
    so the old object still goes at the last close."""
    fs = await make_fs(writeback_delay=3600.0, max_dirty_age=3600.0)
    first = await write_file(fs, ROOT, "e", b"one")
    fh, _ = await fs.open(first, os.O_RDONLY)
    await fs.unlink(ROOT, b"e")
    await write_file(fs, ROOT, "a", b"two")
    keys = await _rename_refused_then_close(fs, store, monkeypatch, b"a", b"e", fh)
    assert keys == ["a"]


async def test_a_failed_directory_rename_over_a_held_delete_holds_it_again(
    make_fs: FsFactory, store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a directory renamed onto a removed one whose file ``c/x`` is
    unlinked but open: the rename takes the held delete of ``c/x`` over, and
    holds it again when its copies fail."""
    fs = await make_fs(writeback_delay=3600.0, max_dirty_age=3600.0)
    c = (await fs.mkdir(ROOT, b"c", 0o755, 0, 0)).ino
    first = await write_file(fs, c, "x", b"one")
    fh, _ = await fs.open(first, os.O_RDONLY)
    await fs.unlink(c, b"x")
    await fs.rmdir(ROOT, b"c")
    a = (await fs.mkdir(ROOT, b"a", 0o755, 0, 0)).ino
    await write_file(fs, a, "x", b"two")
    keys = await _rename_refused_then_close(fs, store, monkeypatch, b"a", b"c", fh)
    assert keys == ["a/", "a/x"]


async def test_a_changed_file_renamed_over_another_answers_for_its_object(
    make_fs: FsFactory, store: CosStore
) -> None:
    """A file with changes not uploaded yet whose old object is in COS, renamed
    onto another file: its old object goes, and the replaced file's object stays
    at the name until the renamed file's upload replaces it, so the renamed file
    answers for it; unlinked before its upload, it deletes it (the model test,
    seed 2: the replaced file came back)."""
    fs = await make_fs(writeback_delay=3600.0, max_dirty_age=3600.0)
    await write_file(fs, ROOT, "e", b"old")
    ino = await write_file(fs, ROOT, "a", b"aaa")
    fh, _ = await fs.open(ino, os.O_WRONLY)
    await fs.write(fh, 1, b"b")
    await fs.flush(fh)
    await fs.release(fh)
    await fs.rename(ROOT, b"a", ROOT, b"e", 0)
    await fs.unlink(ROOT, b"e")
    await fs.ctx.deleter.flush()
    assert [o.key async for page in store.list_all("") for o in page.objects] == []
