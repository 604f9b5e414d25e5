"""Names made and removed: lookup, mkdir, rmdir, unlink, symlink, readlink.

A directory is a 0-byte marker object ``dir/`` (Content-Type
``application/x-directory``) holding its attributes; a prefix without one
is a directory too.  A symlink is an object whose body is the target,
encrypted under a data key of its own like any file (docs/semantics.md).
Removed names go to the ``Deleter`` (batched, journaled deletes).
"""

from __future__ import annotations

import errno
import stat

import trio

from cosencfs.crypto.ctr import DataKey, decrypt, encrypt
from cosencfs.crypto.envelope import ObjectFormat, classify
from cosencfs.crypto.integrity import ChunkKey, tag_body
from cosencfs.errors import FsError
from cosencfs.fs import xattrs
from cosencfs.fs.attrs import DIR_CONTENT_TYPE, Kind, attrs_to_meta
from cosencfs.fs.context import FsContext
from cosencfs.fs.inode import Inode, Remote
from cosencfs.fs.names import INDEX_NAME
from cosencfs.fs.parts import Handler
from cosencfs.fs.policy import MAX_SYMLINK_TARGET, check_symlink


async def put_marker(ctx: FsContext, node: Inode) -> None:
    """Write directory ``node``'s marker with its attributes (mkdir, chmod of a directory)."""
    key = ctx.key_of(node)
    meta = {**attrs_to_meta(node.attrs), **xattrs.fields(ctx, node, key)}
    meta = ctx.tags.with_attr_tag(key, meta, is_dir=True)
    gen = node.meta_gen
    # Every marker has the ETag of the empty body: only dropping the old
    # record first keeps a crash from reviving the old attributes.
    ctx.journal.forget_attrs_now(key)
    etag = await ctx.store.put(key, b"", meta, content_type=DIR_CONTENT_TYPE)
    node.as_dir.has_marker = True
    node.remote = Remote(etag, 0, 0.0, meta)
    node.meta_synced_gen = gen
    node.touched_at = trio.current_time()
    ctx.journal.put_attrs(key, etag, 0, None, meta)


class DirOps(Handler):
    async def lookup(self, parent_ino: int, name: str) -> Inode:
        d = self.ns.directory(parent_ino)
        node = await self.listings.child(d, name)
        if node is None:
            raise FsError(errno.ENOENT)
        if not self.attrs.kind_certain(node):
            await self.attrs.ensure(node)
        if node.unlinked:
            raise FsError(errno.ENOENT)
        node.nlookup += 1
        return node

    async def mkdir(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> Inode:
        mode = stat.S_IFDIR | stat.S_IMODE(mode)
        d, node = await self.new_child(parent_ino, name, Kind.DIR, mode, uid, gid)
        try:
            await put_marker(self.ctx, node)
        except BaseException:
            self.ctx.table.drop(node)
            raise
        # A directory made here is known to be empty: no LIST needed.
        node.as_dir.listed_at = trio.current_time()
        self.attach_new(d, name, node)
        return node

    async def rmdir(self, parent_ino: int, name: str) -> None:
        d = self.ns.directory(parent_ino)
        node = await self.listings.child(d, name)
        if node is None:
            raise FsError(errno.ENOENT)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        # As unlink does a file's: a marker upload (a chmod going up) that
        # started lands before the delete is queued, one that has not started
        # finds the directory gone; else its PUT could land after the delete
        # and bring the removed directory back.
        async with node.upload_lock:
            if node.unlinked:
                raise FsError(errno.ENOENT)
            await self.listings.ensure_listed(node)
            # (No await from here on: the checks hold for the change.)
            if node.unlinked:
                raise FsError(errno.ENOENT)
            if node.as_dir.children:
                raise FsError(errno.ENOTEMPTY)
            key = self.ctx.key_of(node)
            if node.as_dir.has_marker or node.remote is not None:
                self.ctx.deleter.queue(key)
            if node.as_dir.index_seen:
                self.ctx.deleter.queue(key + INDEX_NAME)
            self.ctx.journal.delete_attrs(key)
            self.ns.detach(node)
        self.ns.touch_dir(d)

    async def unlink(self, d: Inode, name: str) -> None:
        node = await self.listings.child(d, name)
        if node is None:
            raise FsError(errno.ENOENT)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        f = node.as_file
        async with node.upload_lock:
            if node.unlinked:
                raise FsError(errno.ENOENT)
            key = self.ctx.key_of(node)
            self.writeback.cancel(node)
            self.records.forget(node)
            had_remote = node.remote is not None
            if f.open_count and had_remote:
                # Readers may still need bytes of the object: delete on last close.
                f.pending_delete = key
                self.ctx.deleter.hold(key, node.remote)
            elif node.remote is not None:
                self.ctx.deleter.queue(key)
                # (Unlinked while open, its companion stays for the readers:
                # fsck --verify lists such orphans.)
                self.ctx.tags.removed(key, node.remote.metadata)
                node.remote = None
            self.ctx.journal.delete_attrs(key)
            node.attrs.ctime_ns = self.ctx.now_ns()
            self.ns.detach(node)
        self.ns.touch_dir(d)

    async def symlink(self, parent_ino: int, name: str, target: str, uid: int, gid: int) -> Inode:
        d, node = await self.new_child(
            parent_ino, name, Kind.SYMLINK, stat.S_IFLNK | 0o777, uid, gid
        )
        key = self.ctx.child_key(d, name, is_dir=False)
        body = target.encode("utf-8")
        dk = DataKey.generate()
        meta = {**self.ctx.codec.seal(dk), **attrs_to_meta(node.attrs)}
        cipher = encrypt(dk, 0, body)
        try:
            tags = tag_body(ChunkKey(dk), cipher).tags if self.ctx.tags.writing else ()
            meta = await self.ctx.tags.seal(key, len(cipher), meta, list(tags))
            etag = await self.ctx.store.put(key, cipher, meta)
        except BaseException:
            if node.remote is not None:  # a held delete handed over: hold it again
                self.ctx.deleter.hold(key, node.remote)
            self.ctx.table.drop(node)
            raise
        f = node.as_file
        f.size = len(body)
        old = node.remote.metadata if node.remote is not None else None
        node.remote = Remote(etag, len(body), 0.0, meta)
        f.symlink_target = target
        self.ctx.journal.put_attrs(key, etag, len(body), None, meta)
        self.ctx.tags.wrote(key, meta, old)
        self.attach_new(d, name, node)
        return node

    async def readlink(self, ino: int) -> str:
        node = self.ns.inode(ino)
        if node.kind is not Kind.SYMLINK:
            raise FsError(errno.EINVAL)
        f = node.as_file
        if f.symlink_target is not None:
            return f.symlink_target
        await self.attrs.ensure(node)
        r = node.remote
        # One copy of the metadata for every check below (each read of
        # ``Remote.metadata`` unpacks a new dict), and one view across the GET.
        meta = None if r is None else r.metadata
        if node.kind is not Kind.SYMLINK or r is None or meta is None:
            raise FsError(errno.EINVAL)
        key = self.ctx.key_of(node)
        # Size and envelope first: a refused target costs no request.
        check_symlink(self.ctx.options, key, meta, r.size)
        # A ranged GET that cannot bring more than a target and one byte, even
        # if the object grew since its size was seen: memory stays bounded.
        body = await self.ctx.store.get(key, 0, MAX_SYMLINK_TARGET + 1, if_match=r.etag)
        check_symlink(self.ctx.options, key, meta, len(body))
        verified = await self.ctx.tags.verify(key, len(body), meta)
        if classify(meta) is ObjectFormat.PLAIN:
            plain = body  # made by cosfs or the console: targets in the clear
        else:
            dk = self.ctx.codec.open(meta, key=key)
            if verified is not None:
                verified.verify_range(ChunkKey(dk), 0, body)
            plain = decrypt(dk, 0, body)
        try:
            target = plain.decode("utf-8")
        except UnicodeDecodeError:
            raise FsError(errno.EIO, f"symlink {key!r} has a target that is not UTF-8") from None
        f.symlink_target = target
        return target
