"""Directory entries: membership of inodes in directories, and listings.

A directory's children come from one paged LIST (delimiter ``/``) reused for
``dir_ttl`` seconds, merged with local changes not yet in COS (``_merge``).
Listings carry sizes and ETags but no metadata: an entry's attributes come
from what this mount wrote or saw, or the journal's attribute cache
(validated by ETag, size and Last-Modified); otherwise ``Namespace`` HEADs.
"""

from __future__ import annotations

import logging
import time

import trio

from cosencfs.errors import TransientError
from cosencfs.fs.attrs import Kind, attrs_from_meta, kind_from_meta
from cosencfs.fs.context import FsContext
from cosencfs.fs.inode import ROOT_INO, Inode, Remote
from cosencfs.fs.names import valid_listed_name
from cosencfs.store.base import ObjectInfo

log = logging.getLogger(__name__)

#: When COS cannot be listed, a stale listing is retried after this many seconds.
STALE_RETRY = 5.0


class Listings:
    """The listing half of ``Namespace`` (which inherits it)."""

    ctx: FsContext
    #: (directory ino, name) -> when it was removed locally; a listing that
    #: started earlier must not bring it back.
    _removed: dict[tuple[int, str], float]

    @property
    def _trust_modes(self) -> bool:
        return self.ctx.options.trust_metadata_modes

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
                node.attrs = attrs_from_meta(
                    rec.meta, Kind.DIR, defaults, rec.lm or 0.0, trust_modes=self._trust_modes
                )
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
        node.kind = kind_from_meta(rec.meta, info.size)
        node.attrs = attrs_from_meta(
            rec.meta,
            node.kind,
            self.ctx.options.defaults,
            info.last_modified,
            trust_modes=self._trust_modes,
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
            self.ctx.cache.layers.retire_chain(head)
        v = node.clean
        if v is not None and v.pins == 0:
            self.ctx.cache.discard(v)
            node.clean = None

    async def child(self, d: Inode, name: str) -> Inode | None:
        await self.ensure_listed(d)
        assert d.children is not None
        return d.children.get(name)
