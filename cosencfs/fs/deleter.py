"""Deletes, batched: ``rm -r`` of 1000 files is one COS request, not 1000.

``unlink`` and ``rmdir`` take the name out of the namespace at once and hand
the object key to the ``Deleter``, which records it in the journal (so a
crash does not bring the file back) and deletes queued keys together with
DeleteMultipleObjects (up to 1000 keys a request) a moment later.  Keys of
files still open are *held* until their last close, so readers keep their
data.

A key that comes back (create, mkdir, symlink or rename onto it) must not be
deleted by an older queued delete: ``settle`` cancels a queued delete of the
key, or waits for one already sent.  Listings skip keys that are pending.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import OrderedDict
from enum import Enum

import trio

from cosencfs.cache.journal import Journal
from cosencfs.errors import CosEncFsError, TransientError
from cosencfs.fs.inode import Remote
from cosencfs.store.base import LIST_PAGE_MAX, ObjectStore

log = logging.getLogger(__name__)


class DeleteState(Enum):
    HELD = "held"  # waits for the last close of an unlinked open file
    QUEUED = "queued"
    SENT = "sent"


class Deleter:
    def __init__(self, store: ObjectStore, journal: Journal, *, delay: float = 0.2) -> None:
        self.store = store
        self.journal = journal
        self.delay = delay
        self._state: dict[str, DeleteState] = {}
        #: The object each held delete is for (handed to a file created at its name).
        self._held: dict[str, Remote | None] = {}
        self._sent: dict[str, trio.Event] = {}
        #: When recent deletes were done, oldest first: a listing that started
        #: before may still show those objects.
        self._done_at: OrderedDict[str, float] = OrderedDict()
        self._wake = trio.Event()
        self.deleted = 0
        self.failures = 0
        self.last_error = ""
        self._retry_at = -math.inf
        for key in journal.pending_deletes():
            self._state[key] = DeleteState.QUEUED  # left by a crash: send them soon
        if self._state:
            self._wake.set()

    def __len__(self) -> int:
        return len(self._state)

    def is_pending(self, key: str) -> bool:
        return key in self._state

    def gone_since(self, key: str, since: float) -> bool:
        """Whether ``key`` is being deleted, or was deleted at or after ``since``
        (so that a listing started at ``since`` may still show it)."""
        return key in self._state or self._done_at.get(key, -math.inf) >= since

    def dirs_with_gone_keys(self, prefix: str, since: float) -> set[str]:
        """Names of the subdirectories of ``prefix`` holding a key that is being
        deleted or was deleted at or after ``since`` (one pass, per listing)."""
        recent = (k for k, t in self._done_at.items() if t >= since)
        names: set[str] = set()
        for key in itertools.chain(self._state, recent):
            if key.startswith(prefix):
                name, sep, _ = key[len(prefix) :].partition("/")
                if sep:
                    names.add(name)
        return names

    # -- producers -------------------------------------------------------------

    def queue(self, key: str) -> None:
        if self._state.get(key) is DeleteState.SENT:
            return
        self._held.pop(key, None)
        self.journal.add_delete(key)
        self._state[key] = DeleteState.QUEUED
        self._wake.set()

    def hold(self, key: str, remote: Remote | None = None) -> None:
        """Delete ``key`` (holding ``remote``) when ``release`` is called (the
        file's last close)."""
        self.journal.add_delete(key)
        self._state[key] = DeleteState.HELD
        self._held[key] = remote

    def release(self, key: str, remote: Remote | None = None) -> None:
        """The last close of the file that held the delete of ``key`` (its
        object ``remote``): send it, unless the delete held there now is for
        another object (a file created at the name took this one's over,
        uploaded, and was unlinked while open in turn: its readers keep it)."""
        if self._state.get(key) is not DeleteState.HELD:
            return
        held = self._held.get(key)
        if remote is not None and held is not None and held.etag != remote.etag:
            return
        self._held.pop(key, None)
        self.queue(key)

    async def settle(self, key: str) -> Remote | None:
        """``key`` is about to be written: no older delete may remove it.

        A queued delete is sent now rather than dropped: until the new object
        is uploaded, the journaled delete is what keeps the old content from
        coming back after a crash.  A held one (the old file is still open
        elsewhere) is handed over: the object it was for is returned, and the
        new file answers for it (its upload replaces it; a rename or unlink
        before that deletes it), as a rename onto a name does.
        """
        for _ in range(3):
            state = self._state.get(key)
            if state is None:
                return None
            if state is DeleteState.HELD:
                del self._state[key]
                self.journal.remove_deletes([key])
                return self._held.pop(key, None)
            if state is DeleteState.SENT:
                await self._sent[key].wait()
                continue
            try:
                await self._send([key])
            except _Retry:
                await trio.sleep(0.5)
        raise TransientError(f"cannot delete the old object {key!r} before writing it again")

    # -- the worker ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            # Let an rm -r queue more before sending a batch.
            await trio.sleep_until(max(trio.current_time() + self.delay, self._retry_at))
            try:
                await self.flush()
            except _Retry:
                pass  # queued again; the wake-up is set

    async def flush(self) -> None:
        """Send every queued delete now and wait for the answers."""
        while True:
            keys = [k for k, s in self._state.items() if s is DeleteState.QUEUED]
            if not keys:
                return
            for i in range(0, len(keys), LIST_PAGE_MAX):
                await self._send(keys[i : i + LIST_PAGE_MAX])

    async def _send(self, batch: list[str]) -> None:
        for key in batch:
            self._state[key] = DeleteState.SENT
            self._sent[key] = trio.Event()
        done: list[str] = []
        try:
            failed = set(await self.store.delete_many(batch))
        except CosEncFsError as exc:
            failed = set(batch)
            self.last_error = str(exc)
            log.warning("deleting %d objects failed (%s); will retry", len(batch), exc)
        for key in batch:
            if key in failed:
                self._state[key] = DeleteState.QUEUED
            else:
                del self._state[key]
                done.append(key)
            self._sent.pop(key).set()
        self.journal.remove_deletes(done)
        now = trio.current_time()
        for key in done:
            self._done_at[key] = now
            self._done_at.move_to_end(key)
        self._forget_done(now)
        self.deleted += len(done)
        if len(done) < len(batch):
            self.failures += len(batch) - len(done)
            self._retry_at = trio.current_time() + 5.0
            self._wake.set()
            raise _Retry()

    def _forget_done(self, now: float) -> None:
        """Past 1024 entries, drop the deletes done over a minute ago (listings
        take seconds at most: older ones cannot matter).

        Oldest first, so this costs what it drops: rebuilding the whole map at
        every batch made an ``rm -r`` of 100,000 files quadratic (over half of
        the daemon's time in the scale benchmark's py-spy)."""
        done_at = self._done_at
        if len(done_at) <= 1024:
            return
        while done_at and now - next(iter(done_at.values())) >= 60.0:
            done_at.popitem(last=False)

    async def drain(self) -> None:
        """Flush, retrying failed deletes (at unmount)."""
        for _ in range(3):
            try:
                await self.flush()
                return
            except _Retry:
                await trio.sleep(1.0)
        log.warning("%d deletes could not be done; they stay in the journal", len(self))


class _Retry(CosEncFsError):
    """Some deletes in a batch failed; they are queued again."""
