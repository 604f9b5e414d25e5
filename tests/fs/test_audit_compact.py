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

import os
from typing import Any

import trio

from cosencfs.fs.core import Filesystem
from tests.fs.test_filesystem import read_file, write_file

ROOT = 1


def _gate_tag_checks(fs: Filesystem) -> tuple[trio.Event, trio.Event]:
    """Make the next tag check wait (as a GET of its companion does) until released."""
    entered, go = trio.Event(), trio.Event()
    tags = fs.ctx.tags
    verify = tags.verify

    async def gated(*args: Any, **kw: Any) -> Any:
        if not go.is_set():
            entered.set()
            await go.wait()
        return await verify(*args, **kw)

    tags.verify = gated  # type: ignore[method-assign]
    return entered, go


async def test_truncate_survives_compaction_while_it_awaits_the_tags(
    make_fs: Any,
) -> None:
    fs: Filesystem = await make_fs()
    data = os.urandom(200_000)
    ino = await write_file(fs, ROOT, "t.bin", data)
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
