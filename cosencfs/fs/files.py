"""Open files: open (close-to-open revalidation), create, close (flush, release), fsync.

Reading is in cosencfs/fs/reads.py, writing in writes.py; the handle table
in handles.py.  ``flush`` (every ``close()``) journals what the handle wrote,
so data whose close returned survives a crash; the last ``release`` of a
file schedules its upload, sends a delete held for an unlinked open file,
and frees what nobody can reach any more.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

import trio

from cosencfs.errors import FsError, NotFoundError, TransientError
from cosencfs.fs.attrs import Kind
from cosencfs.fs.handles import Handle, HandleTable, direct_io_wanted
from cosencfs.fs.inode import Inode
from cosencfs.fs.parts import Handler, Parts
from cosencfs.fs.writes import set_head

log = logging.getLogger(__name__)


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of ``release`` (default: the running kernel); (0, 0) if unparsable."""
    parts = (os.uname().release if release is None else release).split(".")
    try:
        minor = parts[1].split("-")[0]
        return int(parts[0]), int(minor)
    except (IndexError, ValueError):
        return 0, 0


class Files(Handler):
    def __init__(self, parts: Parts) -> None:
        super().__init__(parts)
        self.handles = HandleTable()
        #: The running kernel's (major, minor): which handles may bypass the
        #: page cache (:func:`direct_io_wanted`).
        self.kernel = kernel_version()

    async def open(self, ino: int, flags: int) -> tuple[Handle, bool]:
        """Open; returns the handle and whether the kernel may keep its page cache."""
        node = self.ns.inode(ino)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        keep_cache = await self._revalidate(node)
        h = self.handles.open(node, flags)
        self.ns.hold(node)
        h.direct = direct_io_wanted(node, flags, self.kernel)
        if flags & os.O_TRUNC and h.writable and node.as_file.current_size:
            await self.writer.truncate(node, 0)
            h.wrote = True
            keep_cache = False
        return h, keep_cache

    async def _revalidate(self, node: Inode) -> bool:
        """Close-to-open: a file not open here is checked against COS (one HEAD)."""
        if node.is_open or node.dirty or node.remote is None:
            return True
        if trio.current_time() - node.validated_at < self.ctx.options.open_revalidate:
            return True
        key = self.ctx.key_of(node)
        try:
            info = await self.ctx.store.head(key)
        except TransientError as exc:
            # COS unreachable: what is cached stays readable; uncached bytes
            # will fail with EIO when fetched.
            log.warning("cannot revalidate %r (%s); opening the cached version", key, exc)
            return True
        except NotFoundError:
            if node.parent is not None:
                self.ns.detach(node)
                self.ctx.invalidate_entry(node.parent.ino, node.name)
            raise FsError(errno.ENOENT, f"{key!r} was deleted") from None
        old = node.remote
        unchanged = old.etag == info.etag and old.size == info.size
        self.attrs.apply_head(node, info)
        if not unchanged:
            # The kernel still has the old size: reads would stop there.
            await self.ctx.invalidate_attrs(node.ino)
        return unchanged

    async def create(
        self, parent_ino: int, name: str, mode: int, flags: int, uid: int, gid: int
    ) -> tuple[Handle, Inode]:
        mode = stat.S_IFREG | stat.S_IMODE(mode)
        d, node = await self.new_child(parent_ino, name, Kind.FILE, mode, uid, gid)
        set_head(node, self.ctx.cache.layers.new(size=0, limit=0))
        self.attach_new(d, name, node)
        h = self.handles.open(node, flags)
        h.direct = direct_io_wanted(node, flags, self.kernel)
        h.wrote = True  # creating is a change: close() journals it even without a write
        # Open for writing: uploaded when closed (or once dirty too long), not
        # under a writer that is just starting.
        self.writeback.schedule(node, self.ctx.options.max_dirty_age)
        return h, node

    async def flush(self, fh: int) -> None:
        """close(): make the dirty state survive a crash, and schedule the upload."""
        h = self.handles.get(fh)
        node = h.node
        # Only a handle that wrote journals: closing a file opened for reading
        # must not fail (or cost anything) because of someone else's writes.
        if h.wrote and node.dirty and not node.unlinked:
            h.wrote = False
            self.records.record(node)
            self.writeback.schedule(node)

    async def release(self, fh: int) -> None:
        h = self.handles.close(fh)
        if h is None:
            return
        node = h.node
        f = node.as_file
        if f.open_count:
            return
        if node.dirty and not node.unlinked:
            self.writeback.schedule(node)
        if f.pending_delete is not None:
            key, f.pending_delete = f.pending_delete, None
            self.ctx.deleter.release(key, node.remote)
        if node.unlinked:
            self.ns.drop_content(node)
        self.ns.maybe_drop(node)
        self.ctx.cache.maybe_evict()
        self.ns.compact(node)

    async def fsync(self, fh: int) -> None:
        h = self.handles.get(fh)
        if h.node.dirty and not h.node.unlinked:
            await self.writeback.flush(h.node)
