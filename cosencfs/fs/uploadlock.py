"""An inode's rarely used parts (``Aux``) and its upload lock (``UploadLock``).

Every file a mount knows is an inode (issue 18: 100,000 in a directory);
what it holds only while something is under way sits in one ``Aux``,
made on use and dropped when nothing is left in it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from cosencfs.util import acquire

if TYPE_CHECKING:
    from cosencfs.fs.inode import Inode


class Aux:
    """What an inode holds only while something is under way: a HEAD of its
    attributes, its upload lock and the tasks holding or waiting for it.
    Gone when none is left (one slot on every inode instead of three)."""

    __slots__ = ("loading", "lock", "users")

    def __init__(self) -> None:
        self.loading: trio.Event | None = None
        self.lock: trio.Lock | None = None
        self.users = 0


class Busy:
    """A task at work on an inode's state across awaits (``Inode.busy``): counted
    in ``Aux.users``, so ``Inode.compact_file`` leaves the state object alone
    (a truncate of a closed file holds it while the object's tags are read;
    dropped meanwhile, the task worked on a state the inode no longer had
    and its truncate never ended).  Entered and left in the event loop."""

    __slots__ = ("_node",)

    def __init__(self, node: Inode) -> None:
        self._node = node

    def __enter__(self) -> None:
        node = self._node
        aux = node._aux
        if aux is None:
            aux = node._aux = Aux()
        aux.users += 1

    def __exit__(self, *exc: object) -> None:
        node = self._node
        aux = node._aux
        if aux is None:
            raise RuntimeError("inode left busy without its users counted")
        aux.users -= 1
        if aux.users == 0:
            aux.lock = None  # (nobody holds or waits for it: they count in users)
            node.drop_aux()


class UploadLock:
    """An inode's upload lock for one ``async with`` (see ``Inode.upload_lock``).

    Every user counts itself in ``Aux.users`` before it can yield, so the
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
        aux = node._aux
        if aux is None:
            aux = node._aux = Aux()
        lock = aux.lock
        if lock is None:
            lock = aux.lock = trio.Lock()
        aux.users += 1
        try:
            await acquire(lock)  # (free, the common case: without a scheduler trip)
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
        aux = node._aux
        if aux is None:
            raise RuntimeError("upload lock left without its users counted")
        aux.users -= 1
        if aux.users == 0 and aux.lock is lock:
            aux.lock = None
            node.drop_aux()
