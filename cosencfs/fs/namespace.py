"""Names: lookups, attributes, directory operations, symlinks (listings: listing.py).

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

import trio

from cosencfs.crypto.ctr import DataKey, decrypt, encrypt
from cosencfs.crypto.envelope import ObjectFormat, classify
from cosencfs.errors import FsError, NotFoundError
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
from cosencfs.fs.listing import Listings
from cosencfs.fs.policy import MAX_SYMLINK_TARGET, check_servable, check_symlink
from cosencfs.store.base import ObjectInfo
from cosencfs.util import open_nursery

log = logging.getLogger(__name__)


class Namespace(Listings):
    def __init__(self, ctx: FsContext) -> None:
        self.ctx = ctx
        self._removed = {}

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
            node.attrs = attrs_from_meta(
                meta, Kind.DIR, defaults, info.last_modified, trust_modes=self._trust_modes
            )
        else:
            old = node.remote
            if old is not None and (old.etag != info.etag or old.size != info.size):
                self.drop_clean_content(node)
            node.kind = kind_from_meta(meta, info.size)
            node.remote = Remote(info.etag, info.size, info.last_modified, meta, dict(info.headers))
            if not node.data_dirty:
                node.size = info.size
            node.attrs = attrs_from_meta(
                meta, node.kind, defaults, info.last_modified, trust_modes=self._trust_modes
            )
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
        r = node.remote
        if node.kind is not Kind.SYMLINK or r is None or r.metadata is None:
            raise FsError(errno.EINVAL)
        key = self.ctx.key_of(node)
        # Size and envelope first: a refused target costs no request.
        check_symlink(self.ctx.options, key, r.metadata, r.size)
        # A ranged GET that cannot bring more than a target and one byte, even
        # if the object grew since its size was seen: memory stays bounded.
        body = await self.ctx.store.get(key, 0, MAX_SYMLINK_TARGET + 1, if_match=r.etag)
        check_symlink(self.ctx.options, key, r.metadata, len(body))
        if classify(r.metadata) is ObjectFormat.PLAIN:
            plain = body  # made by cosfs or the console: targets in the clear
        else:
            dk = self.ctx.codec.open(r.metadata, key=key)
            plain = decrypt(dk, 0, body)
        try:
            target = plain.decode("utf-8")
        except UnicodeDecodeError:
            raise FsError(errno.EIO, f"symlink {key!r} has a target that is not UTF-8") from None
        node.symlink_target = target
        return target

    # -- helpers for files -------------------------------------------------------

    def check_open(self, node: Inode) -> None:
        """Raise RefusedError if ``node``'s object must not be served (``open``).

        Content that is local (dirty: written or truncated here) is ours; a
        node whose metadata is still unknown is checked when its content is
        first read (``Files.remote_source``).
        """
        r = node.remote
        if node.is_dir or node.data_dirty or r is None or r.metadata is None:
            return
        check_servable(self.ctx.options, self.ctx.key_of(node), r.metadata, r.size)
