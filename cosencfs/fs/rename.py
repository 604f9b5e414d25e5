"""rename(2) on COS: server-side copies, never a download or re-encryption.

A file whose object is in COS is copied with ``x-cos-metadata-directive:
Copy`` (the envelope travels with it, so the body stays valid) and the old
key deleted.  A file whose new content is not uploaded yet only changes the
key its upload will go to.  A directory is every object under its prefix,
copied then deleted; that is not atomic (see docs/semantics.md).

Renames are serialized by one lock: they are rare next to reads and writes,
and a directory rename must not race another one over the same subtree.
"""

from __future__ import annotations

import errno
import logging
import time
from contextlib import AsyncExitStack

import trio

from cosencfs.errors import FsError, StoreError
from cosencfs.fs import xattrs
from cosencfs.fs.attrs import DIR_CONTENT_TYPE, FILE_CONTENT_TYPE, attrs_to_meta
from cosencfs.fs.inode import Inode, Remote
from cosencfs.fs.names import INDEX_NAME
from cosencfs.fs.parts import Handler, Parts
from cosencfs.fs.special import move_special
from cosencfs.store.base import ObjectInfo
from cosencfs.util import open_nursery

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
COPY_CONCURRENCY = 16


class Renamer(Handler):
    def __init__(self, parts: Parts) -> None:
        super().__init__(parts)
        self._lock = trio.Lock()

    async def rename(
        self, old_parent: int, old_name: str, new_parent: int, new_name: str, flags: int
    ) -> None:
        if flags & RENAME_EXCHANGE:
            raise FsError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        async with self._lock:
            d_old = self.ns.directory(old_parent)
            d_new = self.ns.directory(new_parent)
            src = await self.listings.child(d_old, old_name)
            if src is None:
                raise FsError(errno.ENOENT)
            dst = await self.listings.child(d_new, new_name)
            if dst is src:
                return
            if dst is not None:
                if flags & RENAME_NOREPLACE:
                    raise FsError(errno.EEXIST)
                if dst.is_dir:
                    if not src.is_dir:
                        raise FsError(errno.EISDIR)
                    await self.listings.ensure_listed(dst)
                    if dst.as_dir.children:
                        raise FsError(errno.ENOTEMPTY)
                elif src.is_dir:
                    raise FsError(errno.ENOTDIR)
            if src.is_dir and src.is_ancestor_of(d_new):
                raise FsError(errno.EINVAL, "cannot move a directory into itself")
            self.ctx.child_key(d_new, new_name, is_dir=src.is_dir)
            if src.is_dir:
                await self._rename_dir(src, d_new, new_name, dst)
            else:
                await self._rename_file(src, d_new, new_name, dst)
            self.ns.touch_dir(d_old)
            self.ns.touch_dir(d_new)

    def _move_local(self, src: Inode, d_new: Inode, new_name: str, dst: Inode | None) -> None:
        if dst is not None:
            self.writeback.cancel(dst)
            self.records.forget(dst)
            self.ns.detach(dst)
        old_parent = src.parent
        if old_parent is not None and old_parent.as_dir.children.get(src.name) is src:
            del old_parent.as_dir.children[src.name]
        self.ns.attach(d_new, new_name, src)
        src.attrs.ctime_ns = self.ctx.now_ns()

    # -- files -----------------------------------------------------------------

    async def _rename_file(
        self, src: Inode, d_new: Inode, new_name: str, dst: Inode | None
    ) -> None:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(src.upload_lock)
            if dst is not None:
                await stack.enter_async_context(dst.upload_lock)
            old_key = self.ctx.key_of(src)
            new_key = self.ctx.child_key(d_new, new_name, is_dir=False)
            if src.data_dirty and src.remote is not None:
                # The new content still needs bytes of the old object, which
                # goes: take them now.
                await self.writer.materialize(src)
                # Its xattrs' field is bound to old_key: open it while it is there.
                await xattrs.ensure_loaded(self.ctx, src)
            held = await self.ctx.deleter.settle(new_key)
            if src.remote is not None and src.data_dirty:
                # New content goes up under the new name anyway; drop the old object.
                self.records.record(src)
                self.ctx.journal.set_dirty_key(src.as_file.fid, new_key)
                self.ctx.deleter.queue(old_key)
                self.ctx.tags.removed(old_key, src.remote.metadata)
                self.ctx.journal.delete_attrs(old_key)
                src.remote = None
            elif src.remote is not None:
                try:
                    if src.kind.special:
                        await move_special(self.ctx, src, old_key, new_key)  # one PUT, re-tagged
                    else:
                        await self._copy_file(src, old_key, new_key)
                except BaseException:
                    if held is not None:
                        # The rename failed: the unlinked file's delete is held again.
                        self.ctx.deleter.hold(new_key, held)
                    raise
                if dst is not None and dst.remote is not None and src.remote is not None:
                    # dst's object was replaced by the copy: its companion goes.
                    self.ctx.tags.drop_companion(dst.remote.metadata, keep=src.remote.metadata)
            if src.remote is None and dst is not None and dst.remote is not None:
                # The new key still holds dst's object until src's upload
                # replaces it: src now answers for it (an unlink or a rename
                # of src before its upload must delete it).
                xattrs.loaded(self.ctx, src)  # (src's own first: not dst's)
                src.remote = dst.remote
            if src.remote is None and held is not None:
                # An unlinked open file's object is at the new key, its delete
                # handed over: src answers for it until its upload replaces it.
                xattrs.loaded(self.ctx, src)
                src.remote = held
            self._move_local(src, d_new, new_name, dst)
            if src.dirty:
                self.records.record(src)

    async def _copy_file(self, src: Inode, old_key: str, new_key: str) -> None:
        remote = src.remote
        if remote is None:  # callers copy only files that have an object
            raise FsError(errno.EIO, f"rename: {old_key!r} has no object to copy")
        gen = src.meta_gen
        if remote.metadata is None:
            # Tags bind the object's name: the copy needs new ones, from its metadata.
            await self.attrs.ensure(src)
            remote = src.remote
            if remote is None or remote.metadata is None:
                raise FsError(errno.EIO, f"rename: no metadata of {old_key!r} to carry over")
        base = xattrs.without_field(dict(remote.metadata))
        if src.meta_dirty:
            base.update(attrs_to_meta(src.attrs))
        base.update(xattrs.fields(self.ctx, src, new_key))  # re-sealed for the new name
        retagged = self.ctx.tags.retag(old_key, new_key, remote.size, base)
        meta = retagged if retagged is not None else (base if src.meta_dirty else None)
        # A copy keeps the ETag: a record left at new_key from an earlier
        # object with these bytes must not outlive a crash (see forget_attrs_now).
        self.ctx.journal.forget_attrs_now(new_key)
        etag = await self.ctx.store.copy(
            old_key,
            new_key,
            metadata=meta,
            content_type=FILE_CONTENT_TYPE,
            headers=remote.headers,
            if_match=remote.etag,
            size=remote.size,
        )
        self.ctx.deleter.queue(old_key)
        new_meta = meta if meta is not None else remote.metadata
        src.remote = Remote(etag, remote.size, time.time(), new_meta, remote.headers)
        if src.meta_dirty:
            src.meta_synced_gen = gen
        self.ctx.journal.delete_attrs(old_key)
        self.ctx.journal.put_attrs(new_key, etag, remote.size, None, new_meta)
        self.ctx.tags.moved(old_key)
        self.ctx.tags.wrote(new_key, new_meta, None)
        self._repoint(src, new_key, etag)

    def _repoint(self, node: Inode, key: str, etag: str) -> None:
        """A clean copy fetches its missing bytes from the new key now."""
        f = node.file  # (a directory's marker has no content to repoint)
        if f is not None and f.clean is not None:
            self.ctx.cache.rekey(f.clean, key, etag)

    # -- directories -------------------------------------------------------------

    async def _rename_dir(self, src: Inode, d_new: Inode, new_name: str, dst: Inode | None) -> None:
        old_prefix = self.ctx.key_of(src)
        new_prefix = self.ctx.child_key(d_new, new_name, is_dir=True)
        # Every node moved, directories too: a marker upload (a chmod going
        # up) must not land at the old key after the listing copied it.
        moved = sorted(src.walk(), key=lambda n: n.ino)
        async with AsyncExitStack() as stack:
            for node in moved:
                await stack.enter_async_context(node.upload_lock)
            for node in moved:
                if not node.is_dir and node.data_dirty and node.remote is not None:
                    # Its old object goes: the dirty content must not need it.
                    await self.writer.materialize(node)
            objects: list[ObjectInfo] = []
            listed_at = trio.current_time()
            async for page in self.ctx.store.list_all(old_prefix):
                # Objects whose delete is still queued (unlink, rmdir just
                # before) are gone already: copying them would bring them
                # back under the new name. Their own deletes remove them.
                deleter = self.ctx.deleter
                objects.extend(o for o in page.objects if not deleter.gone_since(o.key, listed_at))
            keys = [o.key for o in objects]
            # Attribute indexes are bound to their directory's prefix: deleted, not copied.
            objects = [o for o in objects if not o.key.endswith("/" + INDEX_NAME)]
            # No delete queued at a new key before (a file unlinked, a
            # directory removed a moment ago) may remove a copy, or the later
            # upload of a node not in COS yet.  A held one (a file unlinked
            # while open) is taken over: its object is replaced by the copy,
            # or answered for by the node that will go up there.
            listed = set(keys)
            unlisted = {
                new_prefix + key[len(old_prefix) :]: node
                for node in moved
                if (key := self.ctx.key_of(node)) not in listed
            }
            news = [new_prefix + old[len(old_prefix) :] for old in keys] + list(unlisted)
            held: dict[str, Remote] = {}
            copied: dict[str, str] = {}
            metas: dict[str, dict[str, str]] = {}
            try:
                for new in news:
                    if (remote := await self.ctx.deleter.settle(new)) is not None:
                        held[new] = remote
                self.ctx.journal.delete_attrs_prefix(new_prefix)
                await self._copy_many(objects, old_prefix, new_prefix, copied, metas)
            except BaseException:
                if copied:
                    with trio.CancelScope(shield=True):
                        await self._undo_copies(list(copied))
                for new, remote in held.items():
                    self.ctx.deleter.hold(new, remote)  # the rename failed: held again
                raise
            for new, node in unlisted.items():
                if new in held and node.file is not None and node.remote is None:
                    node.remote = held[new]
            if dst is not None and dst.as_dir.has_marker and self.ctx.key_of(dst) not in copied:
                # (When the source had a marker, the copy just replaced this one.)
                self.ctx.deleter.queue(self.ctx.key_of(dst))
            failures = await self.ctx.store.delete_many(keys)
            if failures:
                log.warning(
                    "rename of %r: %d old objects could not be deleted (first: %s)",
                    old_prefix,
                    len(failures),
                    next(iter(failures)),
                )
            for old in keys:
                new = new_prefix + old[len(old_prefix) :]
                rec = self.ctx.journal.get_attrs(old)
                meta = metas.get(new) or (rec.meta if rec is not None else None)
                if meta is not None and rec is not None:
                    self.ctx.journal.put_attrs(new, copied[new], rec.size, None, meta)
                self.ctx.tags.moved(old)
                if new in metas:
                    self.ctx.tags.wrote(new, metas[new], None)
            self.ctx.journal.delete_attrs_prefix(old_prefix)
            self._move_local(src, d_new, new_name, dst)
            for node in src.walk():
                key = self.ctx.key_of(node)
                if node.remote is not None and key in copied:
                    node.remote.etag = copied[key]
                    if key in metas:
                        node.remote.metadata = dict(metas[key])
                    self._repoint(node, key, copied[key])
                if node.dirty:
                    self.records.record(node)

    async def _copy_many(
        self,
        objects: list[ObjectInfo],
        old_prefix: str,
        new_prefix: str,
        copied: dict[str, str],
        metas: dict[str, dict[str, str]],
    ) -> None:
        """Copy every object of a directory; tagged ones with tags for their new keys.

        A tagged object's metadata comes from the journal when its record
        still matches, else from a HEAD; ``metas`` gets the new metadata of
        every object copied with new tags.
        """
        limiter = trio.CapacityLimiter(COPY_CONCURRENCY)

        async def one(obj: ObjectInfo) -> None:
            async with limiter:
                new = new_prefix + obj.key[len(old_prefix) :]
                is_dir = obj.key.endswith("/")
                ctype = DIR_CONTENT_TYPE if is_dir else FILE_CONTENT_TYPE
                info = await self._metadata_of(obj)
                # Extended attributes are bound to the key: re-sealed for the new one.
                meta = self.ctx.tags.reseal_xattrs(obj.key, new, info.metadata)
                if is_dir:
                    retagged: dict[str, str] | None = self.ctx.tags.with_attr_tag(
                        new, meta, is_dir=True
                    )
                else:
                    retagged = self.ctx.tags.retag(obj.key, new, obj.size, meta)
                if retagged is None and meta != info.metadata:
                    retagged = meta
                if retagged is None or retagged == info.metadata:
                    copied[new] = await self.ctx.store.copy(
                        obj.key, new, content_type=ctype, size=obj.size
                    )
                    return
                copied[new] = await self.ctx.store.copy(
                    obj.key,
                    new,
                    metadata=retagged,
                    content_type=info.content_type or ctype,
                    headers=info.headers,
                    if_match=info.etag,
                    size=obj.size,
                )
                metas[new] = retagged

        async with open_nursery() as nursery:
            for obj in objects:
                nursery.start_soon(one, obj)

    async def _metadata_of(self, obj: ObjectInfo) -> ObjectInfo:
        rec = self.ctx.journal.get_attrs(obj.key)
        if rec is not None and rec.matches(obj.etag, obj.size, obj.last_modified):
            return ObjectInfo(obj.key, obj.size, obj.etag, obj.last_modified, dict(rec.meta))
        return await self.ctx.store.head(obj.key)

    async def _undo_copies(self, keys: list[str]) -> None:
        try:
            await self.ctx.store.delete_many(keys)
        except StoreError as exc:
            log.warning("could not remove %d partial copies: %s", len(keys), exc)
