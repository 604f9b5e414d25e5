"""Special files: fifos, sockets and device nodes, the way cosfs and s3fs store them.

Each is one empty object (no body, so no envelope and no object tag) whose
``x-cos-meta-mode`` carries the file type, with ``x-cos-meta-rdev`` for a
device node (docs/format.md, section 10).  Its attribute tag binds an empty
object tag, as a directory marker's does, and covers mode and rdev: it is
what lets a ``-o dev`` mount trust a device node (docs/security.md).

Every change is one PUT of the whole object: creation, chmod/chown/utimens
(instead of a metadata copy, which would cost the same), and a rename (a
PUT at the new key, then the old one is deleted).  The mount never serves
content for them: the kernel opens fifos, sockets and devices itself.
"""

from __future__ import annotations

import errno
import stat

import trio

from cosencfs.errors import FsError
from cosencfs.fs.attrs import FILE_CONTENT_TYPE, Kind, attrs_to_meta
from cosencfs.fs.context import FsContext
from cosencfs.fs.inode import Inode, Remote
from cosencfs.fs.parts import Handler


def tagged_now(ctx: FsContext, node: Inode, key: str) -> bool:
    """Whether the next object of special file ``node`` gets an attribute tag.

    A new one does; an existing one only if its attribute tag verifies: a
    chmod or rename through the mount must not bless a device node that
    someone without the key put in the bucket.
    """
    r = node.remote
    if r is None:
        return True
    return r.metadata is not None and ctx.tags.attrs_authentic(key, r.metadata)


async def put_special(ctx: FsContext, node: Inode, key: str, *, tagged: bool) -> None:
    """Store special file ``node`` at ``key``: one PUT of an empty object."""
    meta = attrs_to_meta(node.attrs)
    if tagged:
        meta = ctx.tags.with_attr_tag(key, meta, is_dir=False)
    gen = node.meta_gen
    # Every empty object has the same ETag: only dropping the old record
    # first keeps a crash from reviving old attributes (as for markers).
    ctx.journal.forget_attrs_now(key)
    etag = await ctx.store.put(key, b"", meta, content_type=FILE_CONTENT_TYPE)
    old = node.remote
    node.remote = Remote(etag, 0, 0.0, meta)
    node.as_file.size = 0
    node.meta_synced_gen = gen
    node.touched_at = trio.current_time()
    ctx.journal.put_attrs(key, etag, 0, None, meta)
    # The key holds no content now: a tagged object remembered there (one a
    # rename replaced) is gone, not stripped of its tags.
    ctx.tags.removed(key, None)
    ctx.tags.wrote(key, meta, old.metadata if old is not None else None)


async def move_special(ctx: FsContext, node: Inode, old_key: str, new_key: str) -> None:
    """rename(2) of a special file: a PUT at ``new_key``, then ``old_key`` goes."""
    await put_special(ctx, node, new_key, tagged=tagged_now(ctx, node, old_key))
    ctx.deleter.queue(old_key)
    ctx.journal.delete_attrs(old_key)
    ctx.tags.moved(old_key)


_KINDS = {
    stat.S_IFIFO: Kind.FIFO,
    stat.S_IFSOCK: Kind.SOCKET,
    stat.S_IFCHR: Kind.CHAR_DEVICE,
    stat.S_IFBLK: Kind.BLOCK_DEVICE,
}


class Specials(Handler):
    async def mknod(
        self, parent_ino: int, name: str, mode: int, rdev: int, uid: int, gid: int
    ) -> Inode:
        """A new fifo, socket or device node (the kernel checked CAP_MKNOD)."""
        kind = _KINDS.get(stat.S_IFMT(mode))
        if kind is None:
            # Regular files come through create(); directories and symlinks
            # have their own calls.
            raise FsError(errno.EINVAL, f"mknod of file type {stat.S_IFMT(mode):#o}")
        if kind.device and not 0 <= rdev < 2**32:
            raise FsError(errno.EINVAL, f"device number {rdev} out of range")
        mode = kind.type_bits | stat.S_IMODE(mode)
        d, node = await self.new_child(parent_ino, name, kind, mode, uid, gid)
        node.attrs.rdev = rdev if kind.device else 0
        key = self.ctx.child_key(d, name, is_dir=False)
        try:
            await put_special(self.ctx, node, key, tagged=True)
        except BaseException:
            if node.remote is not None:  # a held delete handed over: hold it again
                self.ctx.deleter.hold(key, node.remote)
            self.ctx.table.drop(node)
            raise
        self.attach_new(d, name, node)
        return node
