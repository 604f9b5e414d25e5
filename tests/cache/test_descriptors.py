"""Cache copies hold descriptors only while used (cosencfs/cache/content.py):
a burst of new files does not hold one descriptor each until uploaded (EMFILE)."""

from __future__ import annotations

import os
from pathlib import Path

from cosencfs.cache import content
from cosencfs.fs.inode import ROOT_INO
from cosencfs.store.cos import CosStore
from tests.fs.test_filesystem import read_file, write_file
from tests.testlib import FsFactory


def _open_under(root: Path) -> int:
    """Descriptors of this process open on files under ``root``."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # (the listing's own descriptor, closed meanwhile)
        n += target.startswith(str(root))
    return n


async def test_dirty_files_do_not_hold_a_descriptor_each(
    make_fs: FsFactory, store: CosStore
) -> None:
    n = content.OPEN_IDLE * 3
    fs = await make_fs(writeback_delay=3600.0, max_dirty_age=3600.0)
    root = fs.ctx.cache.data_dir
    inos = [
        await write_file(fs, ROOT_INO, f"f{i:04d}", f"file {i}".encode(), sync=False)
        for i in range(n)
    ]
    assert len(fs.dirty_inodes()) == n  # none uploaded yet
    assert _open_under(root) <= content.OPEN_IDLE
    await fs.sync_all()
    assert len([o async for page in store.list_all("") for o in page.objects]) >= n
    assert _open_under(root) <= content.OPEN_IDLE
    # Copies whose descriptor was closed are opened again when read.
    for i in (0, n // 2, n - 1):
        assert await read_file(fs, inos[i]) == f"file {i}".encode()
