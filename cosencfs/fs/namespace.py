"""The namespace: which inode has which name, and when an inode can be freed.

Inodes are found by number (``inode``/``directory``), put into and taken out
of directories (``attach``/``detach``), and dropped from the table once the
kernel forgot them and nothing else needs them.  A name removed here is
remembered for a while, so a listing that started earlier does not bring it
back (cosencfs/fs/listing.py).
"""

from __future__ import annotations

import errno

import trio

from cosencfs.errors import FsError
from cosencfs.fs.context import FsContext
from cosencfs.fs.inode import ROOT_INO, Inode
from cosencfs.fs.metastore import JournalMeta


class Namespace:
    def __init__(self, ctx: FsContext) -> None:
        self.ctx = ctx
        #: directory ino -> name -> when it was removed locally; a listing that
        #: started earlier must not bring it back.  By directory (no tuple per
        #: name: ``rm -r`` of 100,000 files, issue 18), and gone with it.
        self._removed: dict[int, dict[str, float]] = {}
        #: Clean files' metadata read back from the journal (fs/metastore.py).
        self.meta = JournalMeta(ctx)

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

    def removed_since(self, d: Inode, name: str, since: float) -> bool:
        """Whether ``name`` was removed from ``d`` here at or after ``since``."""
        names = self._removed.get(d.ino)
        return names is not None and names.get(name, -1.0) >= since

    def compact(self, node: Inode) -> None:
        """``node`` may need less memory now (its clean copy went, its last
        handle closed, a HEAD told its metadata): a clean file closed and
        without a clean copy leaves its metadata to the journal, and its
        ``FileState`` goes when it holds only defaults (``Inode.compact_file``)."""
        self.meta.store(node)
        node.compact_file()

    def hold(self, node: Inode) -> None:
        """``node`` is opened: its metadata is held while it is (read, written,
        committed from it), loaded once now if it was left to the journal."""
        r = node.remote
        if r is not None and r.stored:
            r.metadata = r.metadata

    def maybe_drop(self, node: Inode) -> None:
        """Free an inode nobody refers to any more."""
        if node.nlookup or node.is_open or node.ino == ROOT_INO:
            return
        if not node.unlinked:
            # Still in its directory: keep it unless it has nothing worth keeping.
            return
        f = node.held_file
        if f is not None:
            if f.clean is not None and f.clean.pins == 0:
                self.ctx.cache.discard(f.clean)
                f.clean = None
            if f.head is not None:
                return
        if node.dir is not None:
            # Nothing lists a directory no one can reach.
            self._removed.pop(node.ino, None)
        self.ctx.table.drop(node)

    def detach(self, node: Inode) -> None:
        """Take ``node`` out of its directory (unlink, or replaced by a rename)."""
        parent = node.parent
        if parent is not None and parent.dir is not None:
            if parent.dir.children.get(node.name) is node:
                del parent.dir.children[node.name]
            self._removed.setdefault(parent.ino, {})[node.name] = trio.current_time()
        for sub in node.walk():
            sub.unlinked = True
            # Content nobody can reach any more: free the cache space now (an
            # open file keeps its content until the last close).
            if not sub.is_open:
                self.drop_content(sub)
        self.maybe_drop(node)

    def replace(self, d: Inode, child: Inode) -> None:
        """``child`` is no longer ``d``'s (gone from COS): the kernel forgets the name."""
        self.detach(child)
        self.ctx.invalidate_entry(d.ino, child.name)

    def attach(self, parent: Inode, name: str, node: Inode) -> None:
        parent.as_dir.children[name] = node
        node.parent = parent
        node.name = name
        node.unlinked = False
        node.touched_at = trio.current_time()
        names = self._removed.get(parent.ino)
        if names is not None:
            names.pop(name, None)
            if not names:
                del self._removed[parent.ino]

    def touch_dir(self, d: Inode) -> None:
        """Directory mtime/ctime follow local changes of its entries (in memory)."""
        now = self.ctx.now_ns()
        d.attrs.mtime_ns = d.attrs.ctime_ns = now

    def drop_clean_content(self, node: Inode) -> None:
        """Another version of the object is in COS: the cached one goes (if unused)."""
        f = node.held_file
        if f is None:  # a directory marker, or a file holding no content or target
            return
        v = f.clean
        if v is not None and f.open_count == 0 and v.pins == 0:
            self.ctx.cache.discard(v)
            f.clean = None
        f.symlink_target = None

    def drop_content(self, node: Inode) -> None:
        """Free the cache space of a file nobody can reach: clean copy and dirty layers.

        Not while an upload of it runs (unlink and rename wait for those).
        """
        f = node.held_file
        if f is None:  # (a directory, or a file holding no content)
            return
        head = f.head
        if head is not None and not head.uploading:
            f.head = None
            self.ctx.cache.layers.retire_chain(head)
        v = f.clean
        if v is not None and v.pins == 0:
            self.ctx.cache.discard(v)
            f.clean = None
