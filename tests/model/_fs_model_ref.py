"""The reference of the Filesystem model test: a tree of paths, and what a crash may leave.

Flat: a dict from path ("a/b", the root is "") to a file or a directory.
Besides its content and mode, each file keeps the states a crash may leave
(docs/semantics.md, docs/reliability.md):

``journaled``
    what a crash that keeps the cache directory may show: the state at the
    last durable point (the close of a handle that wrote, a truncate, an
    fsync, a sync, a recovery), then every state since (a background upload
    or a later journal record may have caught any of them); ``None``: no
    file at all (created, never made durable).
``in_cos``
    what a crash that loses the cache directory may show: only what an
    fsync or a sync committed is certain; every state since may have been
    uploaded; ``None``: no object.

Modes follow the same rule in ``crash_modes`` and ``cos_modes`` (a chmod is
made durable by an upload only).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass, field

# The names, depth and bytes of the mount-level model test: the two draw alike.
from tests.model.test_model import MAX_DEPTH, NAMES, payload

__all__ = ["MAX_DEPTH", "NAMES", "RefDir", "RefFile", "Tree", "payload", "put_bytes", "resize"]


def put_bytes(data: bytes, offset: int, chunk: bytes) -> bytes:
    """``data`` with ``chunk`` written at ``offset`` (a hole before it reads as zeros)."""
    head = data[:offset] + bytes(max(0, offset - len(data)))
    return head + chunk + data[offset + len(chunk) :]


def resize(data: bytes, size: int) -> bytes:
    return data[:size] + bytes(max(0, size - len(data)))


@dataclass
class RefFile:
    data: bytes
    mode: int
    journaled: list[bytes | None]
    in_cos: list[bytes | None]
    crash_modes: set[int]
    cos_modes: set[int]

    @classmethod
    def created(cls, mode: int) -> RefFile:
        """Made by create(): nothing durable yet, not in COS yet."""
        return cls(b"", mode, [None, b""], [None, b""], {mode}, {mode})

    def write(self, offset: int, chunk: bytes) -> None:
        self.changed(put_bytes(self.data, offset, chunk))

    def changed(self, data: bytes) -> None:
        self.data = data
        self.journaled.append(data)
        self.in_cos.append(data)

    def durable(self) -> None:
        """Journaled now: a crash that keeps the cache shows this state."""
        self.journaled = [self.data]

    def committed(self) -> None:
        """In COS now (fsync, sync, a recovery)."""
        self.journaled = [self.data]
        self.in_cos = [self.data]
        self.crash_modes = {self.mode}
        self.cos_modes = {self.mode}

    def chmod(self, mode: int) -> None:
        self.mode = mode
        self.crash_modes.add(mode)
        self.cos_modes.add(mode)


@dataclass
class RefDir:
    mode: int
    crash_modes: set[int] = field(default_factory=set)
    cos_modes: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.crash_modes.add(self.mode)
        self.cos_modes.add(self.mode)

    def chmod(self, mode: int) -> None:
        self.mode = mode
        self.crash_modes.add(mode)
        self.cos_modes.add(mode)

    def committed(self) -> None:
        self.crash_modes = {self.mode}
        self.cos_modes = {self.mode}


Node = RefFile | RefDir


def parent_path(path: str) -> str:
    return path.rpartition("/")[0]


def is_below(path: str, top: str) -> bool:
    return path.startswith(top + "/")


class Tree:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {"": RefDir(0o755)}
        #: Files unlinked while a handle kept them open, by path: their delete waits
        #: for the last close, so a crash that loses the journal may bring them back.
        self.ghosts: dict[str, list[bytes | None]] = {}
        #: ... and their modes (such a file comes back with its own).
        self.ghost_modes: dict[str, set[int]] = {}

    # -- lookups -----------------------------------------------------------------

    def resolve_parent(self, path: str) -> int | None:
        """The errno of walking to ``path``'s directory (None: it is one)."""
        parts = path.split("/")
        for i in range(1, len(parts)):
            node = self.nodes.get("/".join(parts[:i]))
            if node is None:
                return errno.ENOENT
            if isinstance(node, RefFile):
                return errno.ENOTDIR
        return None

    def get(self, path: str) -> tuple[int | None, Node | None]:
        err = self.resolve_parent(path)
        if err is not None:
            return err, None
        node = self.nodes.get(path)
        return (None, node) if node is not None else (errno.ENOENT, None)

    def children(self, path: str) -> list[str]:
        prefix = path + "/" if path else ""
        return sorted(p[len(prefix) :] for p in self.nodes if p and parent_path(p) == path)

    def files(self) -> Iterator[tuple[str, RefFile]]:
        for path, node in sorted(self.nodes.items()):
            if isinstance(node, RefFile):
                yield path, node

    def dirs(self) -> list[str]:
        return sorted(p for p, n in self.nodes.items() if isinstance(n, RefDir))

    # -- what the kernel and the filesystem answer -------------------------------

    def open_errno(self, path: str, *, creat: bool, excl: bool) -> int | None:
        err, node = self.get(path)
        if err == errno.ENOENT and creat and self.resolve_parent(path) is None:
            return None
        if err is not None:
            return err
        if creat and excl:
            return errno.EEXIST
        return errno.EISDIR if isinstance(node, RefDir) else None

    def new_errno(self, path: str) -> int | None:
        """mkdir / create(O_EXCL)."""
        err, _ = self.get(path)
        if err == errno.ENOENT and self.resolve_parent(path) is None:
            return None
        return errno.EEXIST if err is None else err

    def rmdir_errno(self, path: str) -> int | None:
        err, node = self.get(path)
        if err is not None:
            return err
        if isinstance(node, RefFile):
            return errno.ENOTDIR
        return errno.ENOTEMPTY if self.children(path) else None

    def unlink_errno(self, path: str) -> int | None:
        err, node = self.get(path)
        if err is not None:
            return err
        return errno.EISDIR if isinstance(node, RefDir) else None

    def rename_errno(self, src: str, dst: str) -> int | None:
        """As Linux's renameat2, in its order, then the filesystem (ENOTEMPTY)."""
        for path in (src, dst):
            err = self.resolve_parent(path)
            if err is not None:
                return err
        snode, dnode = self.nodes.get(src), self.nodes.get(dst)
        if snode is None:
            return errno.ENOENT
        if src == dst:
            return None
        if is_below(dst, src):
            return errno.EINVAL
        if is_below(src, dst):
            return errno.ENOTEMPTY
        if dnode is not None:
            if isinstance(snode, RefDir) and isinstance(dnode, RefFile):
                return errno.ENOTDIR
            if isinstance(snode, RefFile) and isinstance(dnode, RefDir):
                return errno.EISDIR
            if isinstance(dnode, RefDir) and self.children(dst):
                return errno.ENOTEMPTY
        return None

    # -- changes -------------------------------------------------------------------

    def remove(self, path: str) -> Node:
        return self.nodes.pop(path)

    def rename(self, src: str, dst: str) -> None:
        if src == dst:
            return
        node = self.nodes[src]
        old = self.nodes.get(dst)
        moved = {p: n for p, n in self.nodes.items() if p == src or is_below(p, src)}
        for p in moved:
            del self.nodes[p]
        for p, n in moved.items():
            self.nodes[dst + p[len(src) :]] = n
        if isinstance(node, RefFile) and node.in_cos != [node.data]:
            # Content not known to be in COS: the old object goes before the new
            # upload, and a replaced file's object stays under the name until then.
            extra = old.in_cos if isinstance(old, RefFile) else []
            node.in_cos = [*node.in_cos, *extra, None]
            if isinstance(old, RefFile):
                node.cos_modes |= old.cos_modes

    def settle(self) -> None:
        """Everything seen after a recovery or a remount is in COS."""
        for node in self.nodes.values():
            node.committed()
        self.ghosts.clear()
        self.ghost_modes.clear()
