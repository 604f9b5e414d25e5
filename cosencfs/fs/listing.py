"""Directory listings: a directory's children from COS, merged with local changes.

A directory's children come from one paged LIST (delimiter ``/``) reused for
``dir_ttl`` seconds, merged with local changes not yet in COS (``_merge``):
names made here and not uploaded yet stay, names removed here (or whose
delete is queued) stay away, and an entry whose object changed in COS is
refreshed.  Attributes of new entries come from the directory's attribute
index when the listing shows one (one GET, cosencfs/fs/dirindex.py), entry
by entry where it matches the listing, else from the journal's attribute
cache when it still matches (cosencfs/fs/attrload.py; one lookup per entry,
so it comes second).
"""

from __future__ import annotations

import errno
import logging
import time

import trio

from cosencfs.errors import FsError, TransientError
from cosencfs.fs.attrload import AttrLoader
from cosencfs.fs.attrs import Kind, attrs_from_meta
from cosencfs.fs.context import FsContext
from cosencfs.fs.dirindex import DirIndex
from cosencfs.fs.inode import Inode, Remote
from cosencfs.fs.names import INDEX_NAME, valid_listed_name
from cosencfs.fs.namespace import Namespace
from cosencfs.store.base import ObjectInfo

log = logging.getLogger(__name__)

#: When COS cannot be listed, a stale listing is retried after this many seconds.
STALE_RETRY = 5.0


class Listings:
    def __init__(self, ctx: FsContext, ns: Namespace, attrs: AttrLoader, index: DirIndex) -> None:
        self.ctx = ctx
        self.ns = ns
        self.attrs = attrs
        self.index = index

    async def child(self, d: Inode, name: str) -> Inode | None:
        await self.ensure_listed(d)
        return d.as_dir.children.get(name)

    async def check_absent(self, d: Inode, name: str) -> None:
        if await self.child(d, name) is not None:
            raise FsError(errno.EEXIST)

    async def ensure_listed(self, d: Inode) -> None:
        state = d.as_dir
        while True:
            now = trio.current_time()
            if state.listed_at is not None and now - state.listed_at < self.ctx.options.dir_ttl:
                return
            if state.listing is None:
                break
            await state.listing.wait()
            if state.listed_at is not None and state.listed_at >= now:
                return
        state.listing = trio.Event()
        try:
            started = trio.current_time()
            prefix = self.ctx.key_of(d)
            files: dict[str, ObjectInfo] = {}
            dirs: set[str] = set()
            marker: ObjectInfo | None = None
            index: ObjectInfo | None = None
            try:
                async for page in self.ctx.store.list_all(prefix, "/"):
                    for obj in page.objects:
                        name = obj.key[len(prefix) :]
                        if name == "":
                            marker = obj
                        elif name == INDEX_NAME:
                            index = obj
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
                if state.listed_at is None:
                    raise
                # COS unreachable: keep serving the last listing, and try again
                # a little later rather than at every lookup.
                log.warning("listing %r failed (%s); using the cached listing", prefix, exc)
                state.listed_at = trio.current_time() - self.ctx.options.dir_ttl + STALE_RETRY
                return
            fresh = self._merge(d, files, dirs, marker, started)
            if index is not None:
                state.index_seen = True
                # Before the listing counts as done: who waits for it (a
                # readdirplus, the lookups of ls -l) gets the attributes too.
                await self.index.load(d, index)
            # The journal's attribute cache for what the index did not cover:
            # one lookup per entry, so after the index's one GET, not before.
            for node, info in fresh:
                r = node.remote
                if node.attrs_known or node.unlinked or r is None:
                    continue
                if r.etag == info.etag and r.size == info.size:
                    self.attrs.from_cache(node, info)
            state.listed_at = trio.current_time()
        finally:
            ev, state.listing = state.listing, None
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

    @staticmethod
    def _pending(node: Inode) -> bool:
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
    ) -> list[tuple[Inode, ObjectInfo]]:
        """Apply a listing; returns the new file entries, attributes still unknown."""
        state = d.as_dir
        fresh: list[tuple[Inode, ObjectInfo]] = []
        if marker is not None:
            changed = d.remote is not None and not self._same(d.remote, marker)
            # A chmod here not uploaded yet: the marker's mode is the old one.
            if state.has_marker and changed and not d.meta_dirty:
                d.attrs_known = False
            state.has_marker = True
            if d.remote is None or not self._same(d.remote, marker):
                d.remote = Remote(marker.etag, 0, marker.last_modified)
        seen: set[str] = set()
        pending = self.ctx.deleter
        prefix = self.ctx.key_of(d)
        for name in dirs:
            if self.ns.removed_since(d, name, started):
                continue
            if pending.gone_since(f"{prefix}{name}/", started):
                continue  # removed here (rmdir): delete not sent, or sent during the listing
            seen.add(name)
            child = state.children.get(name)
            if child is not None and (child.is_dir or child.touched_at >= started):
                continue
            if child is not None:
                if self._pending(child):
                    log.warning("name clash: %r is a directory in COS and a new local file", name)
                    continue
                self.ns.replace(d, child)
            self._new_child(d, name, Kind.DIR, None)
        for name, info in files.items():
            if name in dirs:
                log.debug("%r is both a file and a directory in COS; showing the directory", name)
                continue
            if self.ns.removed_since(d, name, started):
                continue
            if pending.gone_since(prefix + name, started):
                continue
            seen.add(name)
            child = state.children.get(name)
            if child is None:
                fresh.append((self._new_child(d, name, Kind.FILE, info), info))
            elif child.touched_at >= started:
                continue
            elif child.dir is not None:
                if not self._pending(child) and not child.dir.has_marker:
                    self.ns.replace(d, child)
                    fresh.append((self._new_child(d, name, Kind.FILE, info), info))
            elif not child.dirty and child.remote is not None:
                self._refresh(child, info)
        for name, child in list(state.children.items()):
            if name in seen or child.touched_at >= started or self._pending(child):
                continue
            log.debug("%r vanished from COS", name)
            self.ns.replace(d, child)
        return fresh

    @staticmethod
    def _same(remote: Remote, info: ObjectInfo) -> bool:
        return (
            remote.etag == info.etag
            and remote.size == info.size
            and abs(remote.last_modified - info.last_modified) < 1.0
        )

    def _new_child(self, d: Inode, name: str, kind: Kind, info: ObjectInfo | None) -> Inode:
        lm = info.last_modified if info is not None else time.time()
        attrs = attrs_from_meta({}, kind, self.ctx.options.defaults, lm)
        node = self.ctx.table.new(kind, d, name, attrs)
        d.as_dir.children[name] = node
        if info is not None:
            # (A file's size is the object's: no FileState is made for it; a
            # directory's marker has a size of its own.)
            node.adopt_remote(Remote(info.etag, info.size, info.last_modified))
            # (Its attributes: the index, then the journal; ensure_listed.)
        elif kind is Kind.DIR:
            self.attrs.dir_from_cache(node)
        return node

    def _refresh(self, node: Inode, info: ObjectInfo) -> None:
        """A listing saw ``node``'s object again: notice other clients' changes."""
        remote = node.remote
        if remote is None or self._same(remote, info):
            return
        changed_content = remote.etag != info.etag or remote.size != info.size
        node.adopt_remote(Remote(info.etag, info.size, info.last_modified))
        node.attrs_known = False
        self.attrs.from_cache(node, info)
        if changed_content:
            self.ns.drop_clean_content(node)
        self.ctx.invalidate_inode(node.ino)
