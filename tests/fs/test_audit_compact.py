"""Audit: a clean closed file's ``FileState`` dropped (``Inode.compact_file``) while
a task that took it is still at work on the file (branch rss5).

``compact_file`` refuses while an upload lock or a HEAD is under way, but a
truncate or a first write to a closed file takes the state object, then
awaits the object's integrity tags (``remote_source``: a GET of the
companion when it is not remembered).  Another handle of the file closing,
or its clean copy evicted, meanwhile compacts the inode: the task then
works on a state object the inode no longer has.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import trio

from cosencfs.errors import CosEncFsError, NotFoundError
from cosencfs.fs.core import Filesystem
from cosencfs.store.cos import CosStore
from tests.fs.test_filesystem import read_file, write_file

ROOT = 1


def _gate_tag_checks(fs: Filesystem) -> tuple[trio.Event, trio.Event]:
    """Make the next GET of a tags' companion wait until released (the await
    a tag check of a file over 2 MiB makes when its companion is not cached)."""
    entered, go = trio.Event(), trio.Event()
    tags = fs.ctx.tags
    companion = tags._companion

    async def gated(*args: Any, **kw: Any) -> Any:
        if not go.is_set():
            entered.set()
            await go.wait()
        return await companion(*args, **kw)

    tags._companion = gated  # type: ignore[method-assign]
    return entered, go


async def _big_file_on_a_fresh_mount(make_fs: Any, name: str) -> tuple[Filesystem, int, bytes]:
    """A file with a companion (over 2 MiB of chunk tags' reach), written by one
    mount and looked up by a fresh one (its companion not cached there)."""
    writer: Filesystem = await make_fs()
    data = os.urandom(3 * 1024 * 1024 + 123)
    await write_file(writer, ROOT, name, data)
    fs: Filesystem = await make_fs()
    ino = (await fs.lookup(ROOT, name.encode())).ino
    await fs.getattr(ino)
    return fs, ino, data


async def test_truncate_survives_compaction_while_it_awaits_the_tags(
    make_fs: Any,
) -> None:
    fs, ino, data = await _big_file_on_a_fresh_mount(make_fs, "t.bin")
    node = fs.ns.inode(ino)
    # A reader that opens the file and closes it without reading: its
    # release compacts the (clean, closed, copy-less) file.
    fh, _ = await fs.open(ino, os.O_RDONLY)
    f = node.held_file
    if f is not None and f.clean is not None:
        fs.ctx.cache.discard(f.clean)
        f.clean = None
    entered, go = _gate_tag_checks(fs)
    done = trio.Event()

    async def truncate() -> None:
        await fs.setattr(ino, size=1000)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(truncate)
        with trio.fail_after(10):
            await entered.wait()
        await fs.release(fh)  # the last handle: the inode is compacted here
        go.set()
        # Before the fix: truncate looped for ever (its state object was not
        # the inode's any more, so ``f.head is not head`` every time).
        with trio.fail_after(10):
            await done.wait()
    assert node.current_size == 1000
    assert (await fs.getattr(ino)).size == 1000
    assert await read_file(fs, ino) == data[:1000]
    # And it reaches COS like any truncate.
    fh, _ = await fs.open(ino, os.O_WRONLY)
    await fs.fsync(fh, False)
    await fs.release(fh)
    fs2: Filesystem = await make_fs()
    ino2 = (await fs2.lookup(ROOT, b"t.bin")).ino
    assert await read_file(fs2, ino2) == data[:1000]


async def test_a_file_unlinked_while_its_truncate_reads_the_tags_does_not_come_back(
    make_fs: Any, store: CosStore
) -> None:
    """truncate(path) of a closed file, and an unlink of it while the truncate
    waits for the object's tags: the file is gone, so nothing of it may be
    journaled or uploaded (a record written after the unlink would bring the
    file back after a crash, or at the next write-back)."""
    fs, ino, _ = await _big_file_on_a_fresh_mount(make_fs, "u.bin")
    entered, go = _gate_tag_checks(fs)

    async def truncate() -> None:
        # Done or refused (ENOENT would be right): either way the file is gone.
        with contextlib.suppress(CosEncFsError):
            await fs.setattr(ino, size=1000)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(truncate)
        with trio.fail_after(10):
            await entered.wait()
        await fs.unlink(ROOT, b"u.bin")
        go.set()
    await fs.sync_all()
    left = [r.key for r in fs.ctx.journal.dirty_records()]
    # The daemon stops (or crashes) here; the next one recovers its journal.
    cache = fs.ctx.cache.root.name
    make_fs.close(fs)
    again: Filesystem = await make_fs(cache=cache)
    await again.recover()
    await again.sync_all()
    try:
        await store.head("u.bin")
    except NotFoundError:
        return
    raise AssertionError(f"the unlinked file came back (journal had {left})")
