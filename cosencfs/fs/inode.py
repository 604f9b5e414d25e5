"""Inodes: the in-memory picture of files and directories.

An inode's core is what every kind has: its parent and name (its object key
follows from them, so a directory rename moves every descendant at once),
its attributes, what COS holds for it (``remote``) and its lookup count.
What only a file (or symlink) has is its ``file`` state: its size, its
content in the cache (a clean copy of the object, and while there are
changes not yet in COS the newest dirty layer, its ``head``), its open
handles and its journal record.  What only a directory has is its ``dir``
state: its children and when they were listed.  ``as_file`` and ``as_dir``
give them to code that knows the kind.

Inode numbers are allocated per mount; lookup counts follow the pyfuse3
contract (``lookup``/``readdir`` add, ``forget`` subtracts).
"""

from __future__ import annotations

import errno
import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio

from cosencfs.cache.content import ObjectContent
from cosencfs.cache.dirtylog import DirtyLayer
from cosencfs.errors import FsError
from cosencfs.fs.attrs import Attrs, Kind
from cosencfs.fs.remote import MetaLoader, Remote
from cosencfs.fs.uploadlock import Aux, Busy, UploadLock

__all__ = ["ROOT_INO", "DirState", "FileState", "Inode", "InodeTable", "MetaLoader", "Remote"]

ROOT_INO = 1
#: Record ids: 80 random bits per process, then a count (``FileState.fid``).
_FID_PREFIX = uuid.uuid4().hex[:20]
_FIDS = itertools.count(1)


@dataclass(slots=True, eq=False)
class FileState:
    """What a file or a symlink holds besides the core of its inode."""

    #: The size COS has (or a symlink's target length); ``current_size`` is
    #: what a reader sees.
    size: int = 0
    open_count: int = 0
    #: The key to delete once the last handle closes (unlink of an open file).
    pending_delete: str | None = None
    #: The cached copy of ``remote``'s bytes (reads of a clean file).
    clean: ObjectContent | None = None
    #: The newest layer of content not yet in COS (writes go here).
    head: DirtyLayer | None = None
    symlink_target: str | None = None
    #: What the journal record says (fs/dirtyrecord.py), to skip writing the
    #: same record twice; None when there is no record.
    journaled: object | None = None
    _fid: int | None = field(default=None, repr=False)

    @property
    def fid(self) -> str:
        """Stable id of the file's dirty record in the journal.

        Made on first use: most files (every entry of a listing) never get a
        record, and a uuid per listed file was CPU and memory for nothing.
        Held as a number of this process (an int, not a 32-character str:
        every new file keeps it, issue 18); the id is this process's random
        prefix and the number, unique as a uuid4 is.
        """
        if self._fid is None:
            self._fid = next(_FIDS)
        return f"{_FID_PREFIX}{self._fid:012x}"

    @property
    def current_size(self) -> int:
        return self.head.size if self.head is not None else self.size


@dataclass(slots=True, eq=False)
class DirState:
    """What a directory holds besides the core of its inode."""

    children: dict[str, Inode] = field(default_factory=dict)
    #: trio time of the last complete listing; None: never listed.
    listed_at: float | None = None
    #: Set while a listing runs (others wait for it).
    listing: trio.Event | None = None
    has_marker: bool = False
    #: When the entries' attributes were last fetched ahead of stat() calls.
    stat_ahead_at: float | None = None
    #: A listing showed an attribute index, or this mount wrote one (rmdir deletes it).
    index_seen: bool = False


_KNOWN = 1
_UNLINKED = 2


class Inode:
    """One file, symlink, special file or directory (see the module's text).

    Held compactly, as a mount keeps one per file it knows (issue 18):
    ``attrs_known`` and ``unlinked`` are bits of one int, what is rarely
    used (a HEAD under way, the upload lock) sits in one ``Aux`` made on
    use, and a closed, clean file without a clean copy holds no
    ``FileState`` at all (``compact_file``): every field of one would be
    its default and its size ``remote``'s, so ``file`` makes it again with
    that size on first use.  Code that only asks (``data_dirty``,
    ``is_open``, ``current_size``) never makes one.
    """

    __slots__ = (
        "_aux",
        "_flags",
        "_remote",
        "_state",
        "attrs",
        "ino",
        "kind",
        "meta_gen",
        "meta_synced_gen",
        "name",
        "nlookup",
        "parent",
        "touched_at",
        "validated_at",
    )

    def __init__(
        self,
        ino: int,
        kind: Kind,
        parent: Inode | None,
        name: str,
        attrs: Attrs,
        nlookup: int = 0,
        remote: Remote | None = None,
        attrs_known: bool = False,
    ) -> None:
        self.ino = ino
        self.kind = kind
        self.parent = parent
        self.name = name
        self.attrs = attrs
        self.nlookup = nlookup
        self._remote = remote
        self._flags = _KNOWN if attrs_known else 0
        #: Local attribute changes not yet in COS; bumped on every change.
        self.meta_gen = 0
        self.meta_synced_gen = 0
        #: trio time of the last HEAD or upload that told what COS holds.
        self.validated_at = -1e18
        #: trio time of the last local change of name or content committed to
        #: COS; a listing that started before it is older than what we know.
        self.touched_at = -1e18
        self._aux: Aux | None = None
        #: ``DirState`` for a directory (a directory never becomes a file: a
        #: listing replaces the inode instead); for a file or symlink its
        #: ``FileState``, or None while it would hold only defaults and
        #: ``remote``'s size (``file`` makes it then).
        self._state: FileState | DirState | None = DirState() if kind is Kind.DIR else None

    def __repr__(self) -> str:
        return f"Inode({self.ino}, {self.kind}, {self.name!r})"

    # -- flags -----------------------------------------------------------------

    @property
    def attrs_known(self) -> bool:
        """Attributes are known (from metadata, our own write, or the defaults
        of a directory without marker); False for entries only seen in a listing."""
        return bool(self._flags & _KNOWN)

    @attrs_known.setter
    def attrs_known(self, value: bool) -> None:
        self._flags = self._flags | _KNOWN if value else self._flags & ~_KNOWN

    @property
    def unlinked(self) -> bool:
        """Detached from the namespace (unlinked, or replaced by a rename)."""
        return bool(self._flags & _UNLINKED)

    @unlinked.setter
    def unlinked(self, value: bool) -> None:
        self._flags = self._flags | _UNLINKED if value else self._flags & ~_UNLINKED

    @property
    def attrs_loading(self) -> trio.Event | None:
        """Set while a HEAD of the attributes runs (others wait for it)."""
        aux = self._aux
        return None if aux is None else aux.loading

    @attrs_loading.setter
    def attrs_loading(self, value: trio.Event | None) -> None:
        aux = self._aux
        if aux is None:
            if value is None:
                return
            aux = self._aux = Aux()
        aux.loading = value
        self.drop_aux()

    def drop_aux(self) -> None:
        aux = self._aux
        if aux is not None and aux.loading is None and aux.lock is None and aux.users == 0:
            self._aux = None

    # -- what COS holds, and the file's state ------------------------------------

    @property
    def remote(self) -> Remote | None:
        return self._remote

    @remote.setter
    def remote(self, value: Remote | None) -> None:
        # A file without its FileState has ``remote``'s size: a new remote of
        # another size must not change it behind the file's back.
        if self._state is None and (value is None or value.size != self._implied_size()):
            self._materialize()
        self._remote = value

    def adopt_remote(self, remote: Remote) -> None:
        """``remote`` is what COS holds, and the file's size is its size (an
        entry a listing or a HEAD just told): no ``FileState`` made for it."""
        self._remote = remote
        s = self._state
        if type(s) is FileState:
            s.size = remote.size

    def _implied_size(self) -> int:
        r = self._remote
        return 0 if r is None else r.size

    def _materialize(self) -> FileState:
        f = FileState(size=self._implied_size())
        self._state = f
        return f

    @property
    def file(self) -> FileState | None:
        """The file state of a file or symlink; None for a directory."""
        s = self._state
        if type(s) is FileState:
            return s
        if s is None:
            return self._materialize()
        return None

    @property
    def dir(self) -> DirState | None:
        s = self._state
        return s if type(s) is DirState else None

    @property
    def held_file(self) -> FileState | None:
        """The file state if one is held (None for a directory, and for a file
        holding none: all its fields then are their defaults)."""
        s = self._state
        return s if type(s) is FileState else None

    @property
    def current_size(self) -> int:
        """What a reader sees (``FileState.current_size``; 0 for a directory)."""
        s = self._state
        if type(s) is FileState:
            return s.head.size if s.head is not None else s.size
        return self._implied_size() if s is None else 0

    def compact_file(self) -> bool:
        """Drop the ``FileState`` of a closed, clean file that holds only
        defaults and ``remote``'s size (``file`` makes it again on use).

        Not while anything is under way on it (an upload lock held or
        awaited, a HEAD): such a task may hold the state object.
        """
        f = self._state
        r = self._remote
        if type(f) is not FileState or self.kind is not Kind.FILE or r is None:
            return False
        if (
            self._aux is not None
            or self._flags & _UNLINKED
            or f.size != r.size
            or f.open_count
            or f.head is not None
            or f.clean is not None
            or f.pending_delete is not None
            or f.symlink_target is not None
            or f.journaled is not None
        ):
            return False
        self._state = None
        return True

    @property
    def upload_lock(self) -> UploadLock:
        """One commit at a time; unlink, rename and commit exclude each other.

        ``async with node.upload_lock:``.  The trio lock behind it exists only
        while a task holds or waits for it: a trio lock is ~380 bytes with its
        parking lot, and every file a mount uploads takes it once (100,000
        new files kept 38 MB of idle locks).
        """
        return UploadLock(self)

    def busy(self) -> Busy:
        """``with node.busy():`` around awaits of a task that holds the file's
        state object: it is not compacted meanwhile (``compact_file``)."""
        return Busy(self)

    @property
    def _upload_lock(self) -> trio.Lock | None:
        aux = self._aux
        return None if aux is None else aux.lock

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.DIR

    @property
    def as_file(self) -> FileState:
        """The file state of a file or symlink (EISDIR for a directory)."""
        f = self.file
        if f is None:
            raise FsError(errno.EISDIR, f"inode {self.ino} is a directory")
        return f

    @property
    def as_dir(self) -> DirState:
        """The directory state of a directory (ENOTDIR for anything else)."""
        s = self._state
        if type(s) is not DirState:
            raise FsError(errno.ENOTDIR, f"inode {self.ino} is not a directory")
        return s

    @property
    def meta_dirty(self) -> bool:
        return self.meta_gen != self.meta_synced_gen

    @property
    def data_dirty(self) -> bool:
        s = self._state
        return type(s) is FileState and s.head is not None

    @property
    def dirty(self) -> bool:
        return self.data_dirty or self.meta_dirty

    @property
    def is_open(self) -> bool:
        s = self._state
        return type(s) is FileState and s.open_count > 0

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
            s = node._state
            if type(s) is DirState:
                stack.extend(s.children.values())


class InodeTable:
    def __init__(self, root_attrs: Attrs) -> None:
        self._next = itertools.count(ROOT_INO + 1)
        self.root = Inode(ROOT_INO, Kind.DIR, None, "", root_attrs, nlookup=1, attrs_known=True)
        self._by_ino: dict[int, Inode] = {ROOT_INO: self.root}

    def __len__(self) -> int:
        return len(self._by_ino)

    def get(self, ino: int) -> Inode | None:
        return self._by_ino.get(ino)

    def new(self, kind: Kind, parent: Inode, name: str, attrs: Attrs) -> Inode:
        node = Inode(next(self._next), kind, parent, name, attrs)
        self._by_ino[node.ino] = node
        return node

    def drop(self, node: Inode) -> None:
        self._by_ino.pop(node.ino, None)

    def all(self) -> Iterator[Inode]:
        return iter(list(self._by_ino.values()))
