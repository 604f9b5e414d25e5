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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, cast

import trio

from cosencfs.cache.content import ObjectContent
from cosencfs.cache.dirtylog import DirtyLayer
from cosencfs.cache.metamap import join, pack, split, unpack
from cosencfs.errors import FsError
from cosencfs.fs.attrs import Attrs, Kind

ROOT_INO = 1
#: Record ids: 80 random bits per process, then a count (``FileState.fid``).
_FID_PREFIX = uuid.uuid4().hex[:20]
_FIDS = itertools.count(1)


class MetaLoader(Protocol):
    """Where a ``Remote`` whose metadata is not held gets it back (fs/metastore.py)."""

    def load(self, node: Inode, remote: Remote) -> dict[str, str] | None: ...


class Remote:
    """What COS holds at the inode's key.

    Held compactly, as every file a mount knows keeps one (issue 18): the
    metadata packed (cosencfs/cache/metamap.py, its two parts in this
    record's own slots: ~1 KB less per file than a dict), an MD5 ETag as its
    16 bytes (32 bytes less than the str).  ``metadata`` gives a new dict on
    every read, so a caller's changes never reach the inode (assign to
    change it); ``etag`` a str equal to the one given.

    A clean file's metadata need not be held at all (``stored``): the two
    slots then hold the loader and the inode, ``_check`` a keyed digest of
    what was held, and each read of ``metadata`` gets it back from the
    journal's attribute cache if the record still has that digest
    (fs/metastore.py; None, and the attributes unknown again, when not).
    """

    __slots__ = ("_blob", "_check", "_etag", "_headers", "_shape", "last_modified", "size")

    def __init__(
        self,
        etag: str,
        size: int,
        last_modified: float,
        metadata: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.etag = etag
        self.size = size
        self.last_modified = last_modified
        self._check = 0
        self.metadata = metadata
        #: Standard headers other tools set (Cache-Control ...), kept on rewrites.
        self._headers = pack(headers) if headers else None

    @property
    def etag(self) -> str:
        e = self._etag
        return e.hex() if isinstance(e, bytes) else e

    @etag.setter
    def etag(self, value: str) -> None:
        self._etag = _compact_etag(value)

    @property
    def metadata(self) -> dict[str, str] | None:
        """Envelope (and attribute) metadata; None when only a listing was seen."""
        blob = self._blob
        if blob is None:
            return None
        if isinstance(blob, Inode):
            return cast(MetaLoader, self._shape).load(blob, self)
        return unpack(join(self._shape, blob))

    @metadata.setter
    def metadata(self, value: Mapping[str, str] | None) -> None:
        if value is None:
            self._shape = self._blob = None
        else:
            self._shape, self._blob = split(value)

    @property
    def packed_metadata(self) -> Mapping[str, str] | None:
        """The metadata as held (read-only; no copy of the values), or loaded."""
        blob = self._blob
        if blob is None or isinstance(blob, Inode):
            return self.metadata
        return join(self._shape, blob)

    @property
    def stored(self) -> bool:
        """The metadata is not held but loaded on each read (``store``)."""
        return isinstance(self._blob, Inode)

    @property
    def check(self) -> int:
        """The digest ``store`` was given (what the loader checks a record against)."""
        return self._check

    def store(self, node: Inode, loader: MetaLoader, check: int) -> None:
        """Hold no metadata any more: ``loader`` gives ``node``'s back on use.

        The caller checked that it does, for this object, and gives the
        digest of the metadata held (fs/metastore.py); assigning ``metadata``
        holds it again.
        """
        self._shape = loader
        self._blob = node
        self._check = check

    @property
    def headers(self) -> dict[str, str]:
        return {} if self._headers is None else unpack(self._headers)

    def __repr__(self) -> str:
        return f"Remote({self.etag!r}, size={self.size}, last_modified={self.last_modified})"


def _compact_etag(etag: str) -> str | bytes:
    """An ETag as held: the 16 bytes of a single-part MD5 ETag (lowercase
    hex, what COS answers for a PUT), anything else as given."""
    if len(etag) == 32:
        try:
            raw = bytes.fromhex(etag)
        except ValueError:
            return etag
        if raw.hex() == etag:
            return raw
    return etag


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


@dataclass(slots=True, eq=False)
class Inode:
    ino: int
    kind: Kind
    parent: Inode | None
    name: str
    attrs: Attrs
    nlookup: int = 0
    remote: Remote | None = None
    #: Attributes are known (from metadata, our own write, or the defaults of a
    #: directory without marker); False for entries only seen in a listing.
    attrs_known: bool = False
    attrs_loading: trio.Event | None = None
    #: Local attribute changes not yet in COS; bumped on every change.
    meta_gen: int = 0
    meta_synced_gen: int = 0
    #: Detached from the namespace (unlinked, or replaced by a rename).
    unlinked: bool = False
    #: trio time of the last HEAD or upload that told what COS holds.
    validated_at: float = -1e18
    #: trio time of the last local change of name or content committed to COS;
    #: a listing that started before it is older than what we know.
    touched_at: float = -1e18
    #: Exactly one of them, by kind (a directory never becomes a file: a
    #: listing replaces the inode instead; a file may become a symlink).
    file: FileState | None = field(default=None, init=False)
    dir: DirState | None = field(default=None, init=False)
    _upload_lock: trio.Lock | None = field(default=None, init=False, repr=False)
    #: Tasks holding or waiting for ``_upload_lock`` (it goes when none is left).
    _upload_users: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind is Kind.DIR:
            self.dir = DirState()
        else:
            self.file = FileState()

    @property
    def upload_lock(self) -> UploadLock:
        """One commit at a time; unlink, rename and commit exclude each other.

        ``async with node.upload_lock:``.  The trio lock behind it exists only
        while a task holds or waits for it: a trio lock is ~380 bytes with its
        parking lot, and every file a mount uploads takes it once (100,000
        new files kept 38 MB of idle locks).
        """
        return UploadLock(self)

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.DIR

    @property
    def as_file(self) -> FileState:
        """The file state of a file or symlink (EISDIR for a directory)."""
        if self.file is None:
            raise FsError(errno.EISDIR, f"inode {self.ino} is a directory")
        return self.file

    @property
    def as_dir(self) -> DirState:
        """The directory state of a directory (ENOTDIR for anything else)."""
        if self.dir is None:
            raise FsError(errno.ENOTDIR, f"inode {self.ino} is not a directory")
        return self.dir

    @property
    def meta_dirty(self) -> bool:
        return self.meta_gen != self.meta_synced_gen

    @property
    def data_dirty(self) -> bool:
        return self.file is not None and self.file.head is not None

    @property
    def dirty(self) -> bool:
        return self.data_dirty or self.meta_dirty

    @property
    def is_open(self) -> bool:
        return self.file is not None and self.file.open_count > 0

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
            if node.dir is not None:
                stack.extend(node.dir.children.values())


class UploadLock:
    """An inode's upload lock for one ``async with`` (see ``Inode.upload_lock``).

    Every user counts itself in ``_upload_users`` before it can yield, so the
    trio lock is the same object for all tasks holding or waiting for it;
    the last one out drops it (all in the event loop: no await between the
    count and the change it guards).
    """

    __slots__ = ("_lock", "_node")

    def __init__(self, node: Inode) -> None:
        self._node = node
        self._lock: trio.Lock | None = None

    async def __aenter__(self) -> None:
        node = self._node
        lock = node._upload_lock
        if lock is None:
            lock = node._upload_lock = trio.Lock()
        node._upload_users += 1
        try:
            await lock.acquire()
        except BaseException:
            self._leave(lock)
            raise
        self._lock = lock

    async def __aexit__(self, *exc: object) -> None:
        lock = self._lock
        if lock is None:
            raise RuntimeError("upload lock released without being held")
        self._lock = None
        lock.release()
        self._leave(lock)

    def _leave(self, lock: trio.Lock) -> None:
        node = self._node
        node._upload_users -= 1
        if node._upload_users == 0 and node._upload_lock is lock:
            node._upload_lock = None


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
