"""Names: directory listings, lookups, attributes and directory operations.

A directory's children come from one paged LIST (delimiter ``/``) reused for
``dir_ttl`` seconds, merged with local changes not yet in COS.  Listings
carry sizes and ETags but no metadata, so attributes come from, in order:
what this mount wrote or saw, the journal's attribute cache (validated by
ETag, size and Last-Modified), or one HEAD, made in parallel for a whole
directory when ``readdir`` needs them.
"""

from __future__ import annotations

import errno
import logging
import stat
import time

import trio

from cosencfs.crypto.ctr import DataKey, decrypt, encrypt
from cosencfs.crypto.envelope import ObjectFormat, classify
from cosencfs.errors import FsError, NotFoundError, TransientError
from cosencfs.fs.attrs import (
    DIR_CONTENT_TYPE,
    Attrs,
    Kind,
    attrs_from_meta,
    attrs_to_meta,
    kind_from_meta,
)
from cosencfs.fs.context import FsContext
from cosencfs.fs.inode import ROOT_INO, Inode, Remote
from cosencfs.fs.names import valid_listed_name
from cosencfs.store.base import ObjectInfo
from cosencfs.util import open_nursery

log = logging.getLogger(__name__)

#: When COS cannot be listed, a stale listing is retried after this many seconds.
STALE_RETRY = 5.0


class Namespace:
    def __init__(self, ctx: FsContext) -> None:
        self.ctx = ctx
        #: (directory ino, name) -> when it was removed locally; a listing that
        #: started earlier must not bring it back.
        self._removed: dict[tuple[int, str], float] = {}

    # -- inodes ----------------------------------------------------------------

    def inode(self, ino: int) -> Inode:
        node = self.ctx.table.get(ino)
        if node is None:
            raise FsError(errno.ENOENT, f"stale inode {ino}")
        return node

    def directory(self, ino: int) -> Inode:
        node = self.inode(ino)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        return node

    def forget(self, ino: int, n: int) -> None:
        node = self.ctx.table.get(ino)
        if node is None or node.ino == ROOT_INO:
            return
        node.nlookup = max(0, node.nlookup - n)
        self.maybe_drop(node)

    def maybe_drop(self, node: Inode) -> None:
        """Free an inode nobody refers to any more."""
        if node.nlookup or node.open_count or node.ino == ROOT_INO:
            return
        if not node.unlinked:
            # Still in its directory: keep it unless it has nothing worth keeping.
            return
        if node.clean is not None and node.clean.pins == 0:
            self.ctx.cache.discard(node.clean)
            node.clean = None
        if node.head is None:
            self.ctx.table.drop(node)

    def detach(self, node: Inode) -> None:
        """Take ``node`` out of its directory (unlink, or replaced by a rename)."""
        parent = node.parent
        if parent is not None and parent.children is not None:
            if parent.children.get(node.name) is node:
                del parent.children[node.name]
            self._removed[(parent.ino, node.name)] = trio.current_time()
        for sub in node.walk():
            sub.unlinked = True
            # Content nobody can reach any more: free the cache space now (an
            # open file keeps its content until the last close).
            if sub.open_count == 0:
                self.drop_content(sub)
        self.maybe_drop(node)

    def attach(self, parent: Inode, name: str, node: Inode) -> None:
        assert parent.children is not None
        parent.children[name] = node
        node.parent = parent
        node.name = name
        node.unlinked = False
        node.touched_at = trio.current_time()
        self._removed.pop((parent.ino, name), None)

    # -- listings --------------------------------------------------------------

    async def ensure_listed(self, d: Inode) -> None:
        while True:
            now = trio.current_time()
            if d.listed_at is not None and now - d.listed_at < self.ctx.options.dir_ttl:
                return
            if d.listing is None:
                break
            await d.listing.wait()
            if d.listed_at is not None and d.listed_at >= now:
                return
        d.listing = trio.Event()
        try:
            started = trio.current_time()
            prefix = self.ctx.key_of(d)
            files: dict[str, ObjectInfo] = {}
            dirs: set[str] = set()
            marker: ObjectInfo | None = None
            try:
                async for page in self.ctx.store.list_all(prefix, "/"):
                    for obj in page.objects:
                        name = obj.key[len(prefix) :]
                        if name == "":
                            marker = obj
                        elif valid_listed_name(name):
                            files[name] = obj
                    for p in page.common_prefixes:
                        name = p[len(prefix) : -1]
                        if valid_listed_name(name):
                            dirs.add(name)
                deleter = self.ctx.deleter
                for name in dirs & deleter.dirs_with_gone_keys(prefix, started):
                    if await self._only_deleted_under(f"{prefix}{name}/", started):
                        dirs.discard(name)
            except TransientError as exc:
                if d.listed_at is None:
                    raise
                # COS unreachable: keep serving the last listing, and try again
                # a little later rather than at every lookup.
                log.warning("listing %r failed (%s); using the cached listing", prefix, exc)
                d.listed_at = trio.current_time() - self.ctx.options.dir_ttl + STALE_RETRY
                return
            self._merge(d, files, dirs, marker, started)
            d.listed_at = trio.current_time()
        finally:
            ev, d.listing = d.listing, None
            ev.set()

    async def _only_deleted_under(self, sub: str, since: float) -> bool:
        """Whether every object under ``sub`` is one whose delete is queued here.

        Such a directory (its files unlinked, or the directory renamed away,
        a moment ago) is gone although COS still lists it for a fraction of a
        second, or until the journaled deletes go out after a crash. Asked
        only for directories with such deletes under them: one LIST each.
        """
        deleter = self.ctx.deleter
        async for page in self.ctx.store.list_all(sub):
            if page.common_prefixes:
                return False  # (not asked for: no delimiter)
            if any(not deleter.gone_since(o.key, since) for o in page.objects):
                return False
        return True

    def _pending(self, node: Inode) -> bool:
        """Local state COS does not have yet; a listing must not undo it."""
        for sub in node.walk():
            if sub.kind is not Kind.DIR and (sub.remote is None or sub.dirty):
                return True
        return False

    def _merge(
        self,
        d: Inode,
        files: dict[str, ObjectInfo],
        dirs: set[str],
        marker: ObjectInfo | None,
        started: float,
    ) -> None:
        assert d.children is not None
        if marker is not None:
            if d.has_marker and d.remote is not None and not self._same(d.remote, marker):
                d.attrs_known = False
            d.has_marker = True
            if d.remote is None or not self._same(d.remote, marker):
                d.remote = Remote(marker.etag, 0, marker.last_modified)
        seen: set[str] = set()
        pending = self.ctx.deleter
        prefix = self.ctx.key_of(d)
        for name in dirs:
            if self._removed.get((d.ino, name), -1.0) >= started:
                continue
            if pending.gone_since(f"{prefix}{name}/", started):
                continue  # removed here (rmdir): delete not sent, or sent during the listing
            seen.add(name)
            child = d.children.get(name)
            if child is not None and (child.is_dir or child.touched_at >= started):
                continue
            if child is not None:
                if self._pending(child):
                    log.warning("name clash: %r is a directory in COS and a new local file", name)
                    continue
                self._replace(d, child)
            self._new_child(d, name, Kind.DIR, None)
        for name, info in files.items():
            if name in dirs:
                log.debug("%r is both a file and a directory in COS; showing the directory", name)
                continue
            if self._removed.get((d.ino, name), -1.0) >= started:
                continue
            if pending.gone_since(prefix + name, started):
                continue
            seen.add(name)
            child = d.children.get(name)
            if child is None:
                self._new_child(d, name, Kind.FILE, info)
            elif child.touched_at >= started:
                continue
            elif child.is_dir:
                if not self._pending(child) and not child.has_marker:
                    self._replace(d, child)
                    self._new_child(d, name, Kind.FILE, info)
            elif not child.dirty and child.remote is not None:
                self._refresh(child, info)
        for name, child in list(d.children.items()):
            if name in seen or child.touched_at >= started or self._pending(child):
                continue
            log.debug("%r vanished from COS", name)
            self._replace(d, child)

    @staticmethod
    def _same(remote: Remote, info: ObjectInfo) -> bool:
        return (
            remote.etag == info.etag
            and remote.size == info.size
            and abs(remote.last_modified - info.last_modified) < 1.0
        )

    def _replace(self, d: Inode, child: Inode) -> None:
        self.detach(child)
        self.ctx.invalidate_entry(d.ino, child.name)

    def _new_child(self, d: Inode, name: str, kind: Kind, info: ObjectInfo | None) -> Inode:
        defaults = self.ctx.options.defaults
        lm = info.last_modified if info is not None else time.time()
        attrs = attrs_from_meta({}, kind, defaults, lm)
        node = self.ctx.table.new(kind, d, name, attrs)
        assert d.children is not None
        d.children[name] = node
        if info is not None:
            node.size = info.size
            node.remote = Remote(info.etag, info.size, info.last_modified)
            self._from_attr_cache(node, info)
        elif kind is Kind.DIR:
            rec = self.ctx.journal.get_attrs(self.ctx.key_of(node))
            if rec is not None:
                node.attrs = attrs_from_meta(rec.meta, Kind.DIR, defaults, rec.lm or 0.0)
                node.has_marker = True
                node.attrs_known = True
        return node

    def _from_attr_cache(self, node: Inode, info: ObjectInfo) -> None:
        key = self.ctx.key_of(node)
        rec = self.ctx.journal.get_attrs(key)
        if rec is None or not rec.matches(info.etag, info.size, info.last_modified):
            return
        if rec.lm is None:
            self.ctx.journal.set_attrs_lm(key, info.last_modified)
        node.kind = kind_from_meta(rec.meta)
        node.attrs = attrs_from_meta(
            rec.meta, node.kind, self.ctx.options.defaults, info.last_modified
        )
        assert node.remote is not None
        node.remote.metadata = dict(rec.meta)
        node.attrs_known = True

    def _refresh(self, node: Inode, info: ObjectInfo) -> None:
        """A listing saw ``node``'s object again: notice other clients' changes."""
        assert node.remote is not None
        if self._same(node.remote, info):
            return
        changed_content = node.remote.etag != info.etag or node.remote.size != info.size
        node.remote = Remote(info.etag, info.size, info.last_modified)
        node.size = info.size
        node.attrs_known = False
        self._from_attr_cache(node, info)
        if changed_content:
            self.drop_clean_content(node)
        self.ctx.invalidate_inode(node.ino)

    def drop_clean_content(self, node: Inode) -> None:
        v = node.clean
        if v is not None and node.open_count == 0 and v.pins == 0:
            self.ctx.cache.discard(v)
            node.clean = None
        node.symlink_target = None

    def drop_content(self, node: Inode) -> None:
        """Free the cache space of a file nobody can reach: clean copy and dirty layers.

        Not while an upload of it runs (unlink and rename wait for those).
        """
        head = node.head
        if head is not None and not head.uploading:
            node.head = None
            self.ctx.cache.retire_chain(head)
        v = node.clean
        if v is not None and v.pins == 0:
            self.ctx.cache.discard(v)
            node.clean = None

    async def child(self, d: Inode, name: str) -> Inode | None:
        await self.ensure_listed(d)
        assert d.children is not None
        return d.children.get(name)

    # -- attributes ------------------------------------------------------------

    async def ensure_attrs(self, node: Inode) -> None:
        while not node.attrs_known:
            if node.attrs_loading is not None:
                await node.attrs_loading.wait()
                continue
            node.attrs_loading = ev = trio.Event()
            try:
                await self._load_attrs(node)
            finally:
                node.attrs_loading = None
                ev.set()

    async def _load_attrs(self, node: Inode) -> None:
        key = self.ctx.key_of(node)
        try:
            async with self.ctx.head_limiter:
                info = await self.ctx.store.head(key)
        except NotFoundError:
            if node.is_dir:
                # A prefix without a marker object: a directory all the same.
                node.has_marker = False
                node.attrs_known = True
                return
            if node.parent is not None:
                self._replace(node.parent, node)
            raise FsError(errno.ENOENT, f"{key!r} vanished") from None
        self.apply_head(node, info)

    def apply_head(self, node: Inode, info: ObjectInfo) -> None:
        defaults = self.ctx.options.defaults
        meta = dict(info.metadata)
        if node.is_dir:
            node.has_marker = True
            node.remote = Remote(info.etag, 0, info.last_modified, meta)
            node.attrs = attrs_from_meta(meta, Kind.DIR, defaults, info.last_modified)
        else:
            old = node.remote
            if old is not None and (old.etag != info.etag or old.size != info.size):
                self.drop_clean_content(node)
            node.kind = kind_from_meta(meta)
            node.remote = Remote(info.etag, info.size, info.last_modified, meta, dict(info.headers))
            if not node.data_dirty:
                node.size = info.size
            node.attrs = attrs_from_meta(meta, node.kind, defaults, info.last_modified)
        node.attrs_known = True
        node.meta_synced_gen = node.meta_gen
        node.validated_at = trio.current_time()
        self.ctx.journal.put_attrs(
            self.ctx.key_of(node), info.etag, info.size, info.last_modified, meta
        )

    async def ensure_attrs_many(self, nodes: list[Inode]) -> None:
        """HEAD every node whose attributes are unknown, in parallel."""
        todo = [n for n in nodes if not n.attrs_known]
        if not todo:
            return

        async def one(n: Inode) -> None:
            try:
                await self.ensure_attrs(n)
            except FsError:
                pass  # vanished meanwhile: the entry has been dropped

        async with open_nursery() as nursery:
            for n in todo:
                nursery.start_soon(one, n)

    # -- lookups ---------------------------------------------------------------

    @staticmethod
    def kind_certain(node: Inode) -> bool:
        """Whether the listing alone tells the file type.

        The kernel must never see an inode change type, so an entry is given
        to it before its HEAD only when the type cannot be wrong: directories,
        and objects that cannot be symlinks (a link target is 1 to 4095 bytes).
        Its other attributes are then the defaults, with a zero attribute
        timeout, so a stat() asks (and HEADs) before believing them.
        """
        if node.attrs_known or node.is_dir:
            return True
        r = node.remote
        return r is not None and (r.size == 0 or r.size >= 4096)

    def stat_ahead(self, node: Inode) -> None:
        """Someone stats entries of this directory (ls -l, rsync, du): HEAD the
        other unknown entries in the background, in parallel, once per listing."""
        d = node.parent
        nursery = self.ctx.nursery
        if d is None or d.children is None or nursery is None:
            return
        if d.stat_ahead_at is not None and d.stat_ahead_at >= (d.listed_at or 0.0):
            return
        d.stat_ahead_at = trio.current_time()
        todo = [
            n
            for n in d.children.values()
            if n is not node and not n.attrs_known and n.attrs_loading is None
        ]
        if todo:
            nursery.start_soon(self._stat_ahead, todo)

    async def _stat_ahead(self, nodes: list[Inode]) -> None:
        try:
            await self.ensure_attrs_many(nodes)
        except Exception as exc:
            log.debug("stat-ahead failed: %s", exc)

    async def lookup(self, parent_ino: int, name: str) -> Inode:
        d = self.directory(parent_ino)
        node = await self.child(d, name)
        if node is None:
            raise FsError(errno.ENOENT)
        if not self.kind_certain(node):
            await self.ensure_attrs(node)
        if node.unlinked:
            raise FsError(errno.ENOENT)
        node.nlookup += 1
        return node

    async def check_absent(self, d: Inode, name: str) -> None:
        if await self.child(d, name) is not None:
            raise FsError(errno.EEXIST)

    # -- directories -----------------------------------------------------------

    def marker_meta(self, node: Inode) -> dict[str, str]:
        return attrs_to_meta(node.attrs)

    async def put_marker(self, node: Inode) -> None:
        key = self.ctx.key_of(node)
        meta = self.marker_meta(node)
        gen = node.meta_gen
        # Every marker has the ETag of the empty body: only dropping the old
        # record first keeps a crash from reviving the old attributes.
        self.ctx.journal.forget_attrs_now(key)
        etag = await self.ctx.store.put(key, b"", meta, content_type=DIR_CONTENT_TYPE)
        node.has_marker = True
        node.remote = Remote(etag, 0, 0.0, meta)
        node.meta_synced_gen = gen
        node.touched_at = trio.current_time()
        self.ctx.journal.put_attrs(key, etag, 0, None, meta)

    async def mkdir(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> Inode:
        d = self.directory(parent_ino)
        await self.check_absent(d, name)
        await self.ctx.deleter.settle(self.ctx.child_key(d, name, is_dir=True))
        now = self.ctx.now_ns()
        attrs = Attrs(stat.S_IFDIR | stat.S_IMODE(mode), uid, gid, now, now, now)
        node = self.ctx.table.new(Kind.DIR, d, name, attrs)
        node.attrs_known = True
        try:
            await self.put_marker(node)
        except BaseException:
            self.ctx.table.drop(node)
            raise
        # A directory made here is known to be empty: no LIST needed.
        node.listed_at = trio.current_time()
        self.attach(d, name, node)
        self.touch_dir(d)
        node.nlookup += 1
        return node

    def touch_dir(self, d: Inode) -> None:
        """Directory mtime/ctime follow local changes of its entries (in memory)."""
        now = self.ctx.now_ns()
        d.attrs.mtime_ns = d.attrs.ctime_ns = now

    async def rmdir(self, parent_ino: int, name: str) -> None:
        d = self.directory(parent_ino)
        node = await self.child(d, name)
        if node is None:
            raise FsError(errno.ENOENT)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        await self.ensure_listed(node)
        assert node.children is not None
        if node.children:
            raise FsError(errno.ENOTEMPTY)
        key = self.ctx.key_of(node)
        if node.has_marker or node.remote is not None:
            self.ctx.deleter.queue(key)
        self.ctx.journal.delete_attrs(key)
        self.detach(node)
        self.touch_dir(d)

    # -- symlinks --------------------------------------------------------------

    async def symlink(self, parent_ino: int, name: str, target: str, uid: int, gid: int) -> Inode:
        d = self.directory(parent_ino)
        await self.check_absent(d, name)
        key = self.ctx.child_key(d, name, is_dir=False)
        await self.ctx.deleter.settle(key)
        now = self.ctx.now_ns()
        attrs = Attrs(stat.S_IFLNK | 0o777, uid, gid, now, now, now)
        node = self.ctx.table.new(Kind.SYMLINK, d, name, attrs)
        node.attrs_known = True
        body = target.encode("utf-8")
        dk = DataKey.generate()
        meta = {**self.ctx.codec.seal(dk), **attrs_to_meta(attrs)}
        try:
            etag = await self.ctx.store.put(key, encrypt(dk, 0, body), meta)
        except BaseException:
            self.ctx.table.drop(node)
            raise
        node.size = len(body)
        node.remote = Remote(etag, len(body), 0.0, meta)
        node.symlink_target = target
        self.ctx.journal.put_attrs(key, etag, len(body), None, meta)
        self.attach(d, name, node)
        self.touch_dir(d)
        node.nlookup += 1
        return node

    async def readlink(self, ino: int) -> str:
        node = self.inode(ino)
        if node.kind is not Kind.SYMLINK:
            raise FsError(errno.EINVAL)
        if node.symlink_target is not None:
            return node.symlink_target
        await self.ensure_attrs(node)
        assert node.remote is not None and node.remote.metadata is not None
        key = self.ctx.key_of(node)
        body = await self.ctx.store.get(key, if_match=node.remote.etag)
        if classify(node.remote.metadata) is ObjectFormat.PLAIN:
            plain = body  # made by cosfs or the console: targets in the clear
        else:
            dk = self.ctx.codec.open(node.remote.metadata, key=key)
            plain = decrypt(dk, 0, body)
        try:
            target = plain.decode("utf-8")
        except UnicodeDecodeError:
            raise FsError(errno.EIO, f"symlink {key!r} has a target that is not UTF-8") from None
        node.symlink_target = target
        return target
