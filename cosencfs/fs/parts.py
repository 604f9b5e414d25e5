"""The parts the request handlers share (files, directory operations, rename).

``Filesystem`` (cosencfs/fs/core.py) makes each part once and hands the
same ``Parts`` to every handler; a handler derives from ``Handler`` to have
them as attributes.
"""

from __future__ import annotations

from dataclasses import dataclass

from cosencfs.fs.attrload import AttrLoader
from cosencfs.fs.attrs import Attrs, Kind
from cosencfs.fs.context import FsContext
from cosencfs.fs.dirtyrecord import DirtyRecords
from cosencfs.fs.inode import Inode
from cosencfs.fs.listing import Listings
from cosencfs.fs.namespace import Namespace
from cosencfs.fs.writeback import WriteBack
from cosencfs.fs.writes import Writer


@dataclass(slots=True, frozen=True)
class Parts:
    ctx: FsContext
    ns: Namespace
    attrs: AttrLoader
    listings: Listings
    records: DirtyRecords
    writeback: WriteBack
    writer: Writer


class Handler:
    """Base of the request handlers: the shared parts as attributes."""

    def __init__(self, parts: Parts) -> None:
        self.ctx = parts.ctx
        self.ns = parts.ns
        self.attrs = parts.attrs
        self.listings = parts.listings
        self.records = parts.records
        self.writeback = parts.writeback
        self.writer = parts.writer

    async def new_child(
        self, parent_ino: int, name: str, kind: Kind, mode: int, uid: int, gid: int
    ) -> tuple[Inode, Inode]:
        """A new inode for ``name`` in directory ``parent_ino``, and the directory.

        The name is checked free and a queued delete of its key settled first;
        the inode is in the table but not yet in the directory (``attach_new``).
        """
        d = self.ns.directory(parent_ino)
        await self.listings.check_absent(d, name)
        held = await self.ctx.deleter.settle(self.ctx.child_key(d, name, is_dir=kind is Kind.DIR))
        now = self.ctx.now_ns()
        node = self.ctx.table.new(kind, d, name, Attrs(mode, uid, gid, now, now, now))
        node.attrs_known = True
        if held is not None and kind is not Kind.DIR:
            # An unlinked, still open file's object is at this key: the new
            # file answers for it until its own upload replaces it (if it is
            # renamed away or unlinked first, that deletes the old object).
            node.remote = held
        return d, node

    def attach_new(self, d: Inode, name: str, node: Inode) -> None:
        """Put a new inode into its directory; the kernel holds one lookup of it."""
        self.ns.attach(d, name, node)
        self.ns.touch_dir(d)
        node.nlookup += 1
