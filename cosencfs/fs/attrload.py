"""Loading attributes: what COS says about an inode, with as few HEADs as possible.

Listings carry sizes and ETags but no metadata, so attributes come from, in
order: what this mount wrote or saw, the directory's attribute index
(cosencfs/fs/dirindex.py, validated by ETag, size and Last-Modified: one GET
for the whole directory), the journal's attribute cache (validated the same
way, one lookup per entry), or one HEAD.  The first stat()
of an entry whose attributes are unknown HEADs the directory's other
unknown entries too, in parallel, in the background (stat-ahead).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Mapping

import trio

from cosencfs.errors import FsError, NotFoundError
from cosencfs.fs.attrs import Kind, attrs_from_meta, kind_from_meta
from cosencfs.fs.context import FsContext
from cosencfs.fs.inode import Inode, Remote
from cosencfs.fs.namespace import Namespace
from cosencfs.fs.policy import MAX_SYMLINK_TARGET
from cosencfs.store.base import ObjectInfo
from cosencfs.util import open_nursery

log = logging.getLogger(__name__)


class AttrLoader:
    def __init__(self, ctx: FsContext, ns: Namespace) -> None:
        self.ctx = ctx
        self.ns = ns
        #: Called with the directory after its entries were HEADed together
        #: (the directory index then covers them: cosencfs/fs/dirindex.py).
        self.on_headed: Callable[[Inode], None] = lambda d: None

    @property
    def _trust_modes(self) -> bool:
        return self.ctx.options.trust_metadata_modes

    def _devices(self, key: str, meta: Mapping[str, str]) -> bool:
        """Whether a device node in ``meta`` is shown as one: always on a nodev
        mount (inert there), on ``-o dev`` only with a verified attribute tag."""
        return not self.ctx.options.devices or self.ctx.tags.attrs_authentic(key, meta)

    async def ensure(self, node: Inode) -> None:
        """Make ``node``'s attributes known (one HEAD at most, shared by all who ask)."""
        while not node.attrs_known:
            if node.attrs_loading is not None:
                await node.attrs_loading.wait()
                continue
            node.attrs_loading = ev = trio.Event()
            try:
                await self._load(node)
            finally:
                node.attrs_loading = None
                ev.set()

    async def _load(self, node: Inode) -> None:
        key = self.ctx.key_of(node)
        try:
            async with self.ctx.head_limiter:
                info = await self.ctx.store.head(key)
        except NotFoundError:
            if node.dir is not None:
                # A prefix without a marker object: a directory all the same.
                node.dir.has_marker = False
                node.attrs_known = True
                return
            if node.parent is not None:
                self.ns.replace(node.parent, node)
            raise FsError(errno.ENOENT, f"{key!r} vanished") from None
        self.apply_head(node, info)

    def apply_head(self, node: Inode, info: ObjectInfo) -> None:
        """What a HEAD of ``node``'s key said is what COS holds now."""
        defaults = self.ctx.options.defaults
        meta = dict(info.metadata)
        key = self.ctx.key_of(node)
        # Attributes whose tag fails are not applied: the defaults are.
        shown = self.ctx.tags.attr_meta(key, meta, is_dir=node.dir is not None)
        if node.dir is not None:
            node.dir.has_marker = True
            node.remote = Remote(info.etag, 0, info.last_modified, meta)
            node.attrs = attrs_from_meta(
                shown, Kind.DIR, defaults, info.last_modified, trust_modes=self._trust_modes
            )
        else:
            old = node.remote
            if old is not None and (old.etag != info.etag or old.size != info.size):
                self.ns.drop_clean_content(node)
            node.kind = kind_from_meta(shown, info.size, devices=self._devices(key, shown))
            new = Remote(info.etag, info.size, info.last_modified, meta, dict(info.headers))
            if node.data_dirty:
                node.remote = new
            else:
                node.adopt_remote(new)  # (its size too, with no FileState made for it)
            node.attrs = attrs_from_meta(
                shown, node.kind, defaults, info.last_modified, trust_modes=self._trust_modes
            )
        node.attrs_known = True
        node.meta_synced_gen = node.meta_gen
        node.validated_at = trio.current_time()
        self.ctx.journal.put_attrs(key, info.etag, info.size, info.last_modified, meta)
        if shown is meta:
            # (Its tag verified, its record just put: a file with no clean copy
            # held leaves its metadata there, fs/metastore.py.)
            self.ns.meta.adopt(node)

    async def ensure_many(self, nodes: list[Inode]) -> None:
        """HEAD every node whose attributes are unknown, in parallel."""
        todo = [n for n in nodes if not n.attrs_known]
        if not todo:
            return

        async def one(n: Inode) -> None:
            try:
                await self.ensure(n)
            except FsError:
                pass  # vanished meanwhile: the entry has been dropped

        async with open_nursery() as nursery:
            for n in todo:
                nursery.start_soon(one, n)
        for d in {id(n.parent): n.parent for n in todo if n.parent is not None}.values():
            self.on_headed(d)

    @staticmethod
    def kind_certain(node: Inode) -> bool:
        """Whether the listing alone tells the file type.

        The kernel must never see an inode change type, so an entry is given
        to it before its HEAD only when the type cannot be wrong: directories,
        and objects that can be neither symlinks (a link target is 1 to 4095
        bytes) nor special files (empty objects): 4096 bytes or more.
        Its other attributes are then the defaults, with a zero attribute
        timeout, so a stat() asks (and HEADs) before believing them.
        """
        if node.attrs_known or node.is_dir:
            return True
        r = node.remote
        return r is not None and r.size > MAX_SYMLINK_TARGET

    def stat_ahead(self, node: Inode) -> None:
        """Someone stats entries of this directory (ls -l, rsync, du): HEAD the
        other unknown entries in the background, in parallel, once per listing."""
        parent = node.parent
        d = parent.dir if parent is not None else None
        nursery = self.ctx.nursery
        if d is None or nursery is None:
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
            await self.ensure_many(nodes)
        except Exception as exc:
            log.debug("stat-ahead failed: %s", exc)

    def from_cache(self, node: Inode, info: ObjectInfo) -> None:
        """A listed object's attributes from the journal, if its record still matches."""
        key = self.ctx.key_of(node)
        rec = self.ctx.journal.get_attrs(key)
        if rec is None or not rec.matches(info.etag, info.size, info.last_modified):
            return
        if not self.ctx.tags.attrs_hold(key, rec.meta, is_dir=False):
            return  # (a HEAD settles them)
        if rec.lm is None:
            self.ctx.journal.set_attrs_lm(key, info.last_modified)
        node.kind = kind_from_meta(rec.meta, info.size, devices=self._devices(key, rec.meta))
        node.attrs = attrs_from_meta(
            rec.meta,
            node.kind,
            self.ctx.options.defaults,
            info.last_modified,
            trust_modes=self._trust_modes,
        )
        node.attrs_known = True
        if node.remote is not None:
            node.remote.metadata = rec.meta
            # (Checked just above: left there, read back on use, fs/metastore.py.)
            self.ns.meta.adopt(node)

    def from_index(self, node: Inode, meta: Mapping[str, str], *, authentic: bool) -> None:
        """Attributes from a directory index entry that matched the listing
        (cosencfs/fs/dirindex.py): ``meta`` holds the fields a HEAD would apply."""
        r = node.remote
        lm = r.last_modified if r is not None else 0.0
        size = r.size if r is not None else 0
        devices = not self.ctx.options.devices or authentic
        node.kind = kind_from_meta(meta, size, devices=devices)
        node.attrs = attrs_from_meta(
            meta, node.kind, self.ctx.options.defaults, lm, trust_modes=self._trust_modes
        )
        node.attrs_known = True

    def dir_from_cache(self, node: Inode) -> None:
        """A listed directory's attributes from the journal (markers are not HEADed)."""
        key = self.ctx.key_of(node)
        rec = self.ctx.journal.get_attrs(key)
        if rec is None or not self.ctx.tags.attrs_hold(key, rec.meta, is_dir=True):
            return  # (unknown: a HEAD of the marker settles them)
        node.attrs = attrs_from_meta(
            rec.meta,
            Kind.DIR,
            self.ctx.options.defaults,
            rec.lm or 0.0,
            trust_modes=self._trust_modes,
        )
        node.as_dir.has_marker = True
        node.attrs_known = True
