"""Inodes: the in-memory picture of files and directories.

An inode knows its parent and name (its object key follows from them, so a
directory rename moves every descendant at once), its attributes, what COS
holds for it (``remote``), and, for files, its content in the cache: a clean
copy of the object (``clean``) and, while there are changes not yet in COS,
the newest dirty layer (``head``).
Inode numbers are allocated per mount; lookup counts follow the pyfuse3
contract (``lookup``/``readdir`` add, ``forget`` subtracts).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio

from cosencfs.cache.content import ObjectContent
from cosencfs.cache.dirtylog import DirtyLayer
from cosencfs.fs.attrs import Attrs, Kind

ROOT_INO = 1


@dataclass(slots=True)
class Remote:
    """What COS holds at the inode's key."""

    etag: str
    size: int
    last_modified: float
    #: Envelope (and attribute) metadata; None when only a listing was seen.
    metadata: dict[str, str] | None = None
    #: Standard headers other tools set (Cache-Control ...), kept on rewrites.
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class Inode:
    ino: int
    kind: Kind
    parent: Inode | None
    name: str
    attrs: Attrs
    size: int = 0
    nlookup: int = 0
    open_count: int = 0
    remote: Remote | None = None
    #: Attributes are known (from metadata, our own write, or the defaults of a
    #: directory without marker); False for entries only seen in a listing.
    attrs_known: bool = False
    #: Local attribute changes not yet in COS; bumped on every change.
    meta_gen: int = 0
    meta_synced_gen: int = 0
    #: Detached from the namespace (unlinked, or replaced by a rename).
    unlinked: bool = False
    #: The key to delete once the last handle closes (unlink of an open file).
    pending_delete: str | None = None
    #: The cached copy of ``remote``'s bytes (reads of a clean file).
    clean: ObjectContent | None = None
    #: The newest layer of content not yet in COS (writes go here).
    head: DirtyLayer | None = None
    symlink_target: str | None = None
    #: Stable id of the file's dirty record in the journal.
    fid: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: What the journal record says (key, version, size, bytes, attrs), to skip
    #: writing the same record twice; None when there is no record.
    journaled: object | None = None
    # directories
    children: dict[str, Inode] | None = None
    listed_at: float | None = None
    listing: trio.Event | None = None
    has_marker: bool = False
    #: When the entries' attributes were last fetched ahead of stat() calls.
    stat_ahead_at: float | None = None
    # files
    validated_at: float = -1e18
    #: trio time of the last local change of name or content committed to COS;
    #: a listing that started before it is older than what we know.
    touched_at: float = -1e18
    upload_lock: trio.Lock = field(default_factory=trio.Lock)
    attrs_loading: trio.Event | None = None

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.DIR

    @property
    def meta_dirty(self) -> bool:
        return self.meta_gen != self.meta_synced_gen

    @property
    def data_dirty(self) -> bool:
        return self.head is not None

    @property
    def dirty(self) -> bool:
        return self.data_dirty or self.meta_dirty

    @property
    def file_size(self) -> int:
        if self.head is not None:
            return self.head.size
        return self.size

    def path_parts(self) -> list[str]:
        parts: list[str] = []
        node: Inode | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        parts.reverse()
        return parts

    def is_ancestor_of(self, other: Inode) -> bool:
        node: Inode | None = other
        while node is not None:
            if node is self:
                return True
            node = node.parent
        return False

    def walk(self) -> Iterator[Inode]:
        """This inode and every descendant currently known."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            if node.children:
                stack.extend(node.children.values())


class InodeTable:
    def __init__(self, root_attrs: Attrs) -> None:
        self._next = itertools.count(ROOT_INO + 1)
        self.root = Inode(
            ROOT_INO,
            Kind.DIR,
            None,
            "",
            root_attrs,
            attrs_known=True,
            children={},
            nlookup=1,
        )
        self._by_ino: dict[int, Inode] = {ROOT_INO: self.root}

    def __len__(self) -> int:
        return len(self._by_ino)

    def get(self, ino: int) -> Inode | None:
        return self._by_ino.get(ino)

    def new(self, kind: Kind, parent: Inode, name: str, attrs: Attrs) -> Inode:
        ino = next(self._next)
        node = Inode(ino, kind, parent, name, attrs)
        if kind is Kind.DIR:
            node.children = {}
        self._by_ino[ino] = node
        return node

    def drop(self, node: Inode) -> None:
        self._by_ino.pop(node.ino, None)

    def all(self) -> Iterator[Inode]:
        return iter(list(self._by_ino.values()))
