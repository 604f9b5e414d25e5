"""Write-back: when dirty files go up.

``WriteBack`` keeps a deadline per dirty inode (pushed back by every change,
so a file written, renamed and touched in quick succession goes up once, at
its final name) and runs uploads through the upload window's limiter
(cosencfs/fs/window.py: as many at once as latency, not bandwidth, asks
for, never more than the connection pool).  ``cosencfs sync`` and unmount
start every dirty file at once, through the same limiter; ``fsync`` of one
file starts it at once too, past the limiter: neither waits for the
write-back delay.  Failed
background uploads are retried with growing delays; the data stays in the
cache and the journal meanwhile.  How a file goes up is the commit's
business (cosencfs/fs/commit.py).
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from cosencfs.errors import CosEncFsError
from cosencfs.fs.inode import Inode
from cosencfs.util import acquire

log = logging.getLogger(__name__)

#: How late an upload may start past its deadline, as a share of the delay
#: (at most ``SLACK_MAX`` s): files closed one after the other each have a
#: deadline of their own, and waking the scheduler for each (a cancel scope,
#: an event, a trip through trio's deadlines: ~20 us of the event loop per
#: file) cost more than starting the uploads due within one slack together.
SLACK_SHARE = 0.05
SLACK_MAX = 0.05


@dataclass(slots=True)
class _Due:
    node: Inode
    deadline: float
    first_dirty: float
    failures: int = 0


@dataclass(slots=True)
class WriteBackStats:
    uploads: int = 0
    failures: int = 0
    last_error: str = ""
    failing: dict[int, str] = field(default_factory=dict)


class WriteBack:
    def __init__(
        self,
        commit: Callable[[Inode], Awaitable[None]],
        *,
        delay: float,
        max_dirty_age: float,
        limiter: trio.CapacityLimiter,
    ) -> None:
        self._commit = commit
        self.delay = delay
        self.max_dirty_age = max_dirty_age
        self._due: dict[int, _Due] = {}
        # Deadlines in a heap (stale entries skipped when popped): thousands of
        # files closed at once must not make every scheduling step O(n).
        self._heap: list[tuple[float, int, int]] = []
        self._seq = 0
        self._wake_at = math.inf
        self._wake = trio.Event()
        self._limiter = limiter
        self._slack = min(SLACK_MAX, delay * SLACK_SHARE)
        #: Times the scheduler woke up to start uploads (tests count them).
        self.wakeups = 0
        self._running: dict[int, trio.Event] = {}
        # When the oldest change not yet in COS was made, per inode: kept across
        # failed uploads and fsyncs, so the age an operator sees is the data's.
        # time.monotonic(), not trio's clock: stats are also read outside trio.run.
        self._dirty_since: dict[int, tuple[float, Inode]] = {}
        self.stats = WriteBackStats()

    @property
    def queued(self) -> int:
        return len(self._due) + len(self._running)

    def oldest_dirty_age(self) -> float:
        """Seconds since the oldest change not yet uploaded was made (0: none)."""
        # An inode made clean or unlinked by a path that did not tell us (a
        # rename's copy, an unlink) must not age forever: dropped here.
        for ino, (_, node) in list(self._dirty_since.items()):
            if not node.dirty or node.unlinked:
                del self._dirty_since[ino]
        if not self._dirty_since:
            return 0.0
        oldest = min(since for since, _ in self._dirty_since.values())
        return max(0.0, time.monotonic() - oldest)

    def schedule(self, node: Inode, delay: float | None = None) -> None:
        """Upload ``node`` after ``delay`` (default: the write-back delay),
        pushing back an earlier deadline, but not past the maximum dirty age."""
        now = trio.current_time()
        self._dirty_since.setdefault(node.ino, (time.monotonic(), node))
        wait = self.delay if delay is None else delay
        due = self._due.get(node.ino)
        if due is None:
            due = self._due[node.ino] = _Due(node, now + wait, now)
        else:
            deadline = min(now + wait, due.first_dirty + self.max_dirty_age)
            if deadline == due.deadline:
                # Already in the heap (or re-pushed when its running upload
                # ends): a file written over and over at its maximum age.
                return
            due.deadline = deadline
        self._push(node.ino, due.deadline)

    def _push(self, ino: int, deadline: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, ino))
        if deadline + self._slack < self._wake_at:
            self._wake.set()

    def cancel(self, node: Inode) -> None:
        self._due.pop(node.ino, None)
        self._dirty_since.pop(node.ino, None)
        self.stats.failing.pop(node.ino, None)

    async def flush(self, node: Inode, *, bounded: bool = False) -> None:
        """Upload ``node`` now and wait for it (fsync; ``bounded``: one of a
        sync's many, which share the window's limiter with the background)."""
        self._due.pop(node.ino, None)
        if bounded:
            await self._bounded(node)
        else:
            await self._upload(node)
        self.stats.failing.pop(node.ino, None)

    async def _bounded(self, node: Inode) -> None:
        """``_upload`` holding one of the window's tokens."""
        limiter = self._limiter
        await acquire(limiter)
        try:
            await self._upload(node)
        finally:
            limiter.release()

    async def _upload(self, node: Inode) -> None:
        started = time.monotonic()
        await self._commit(node)
        if node.dirty and not node.unlinked:
            # Changed while uploading: what is left is no older than this upload.
            self._dirty_since[node.ino] = (started, node)
        else:
            self._dirty_since.pop(node.ino, None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                self.wakeups += 1
                now = trio.current_time()
                while self._heap and self._heap[0][0] <= now:
                    deadline, _, ino = heapq.heappop(self._heap)
                    due = self._due.get(ino)
                    if due is None or due.deadline != deadline or ino in self._running:
                        continue  # stale, or re-queued when the running upload ends
                    del self._due[ino]
                    self._running[ino] = trio.Event()
                    nursery.start_soon(self._background, due)
                # The uploads due within the slack after the next deadline start together.
                self._wake_at = self._heap[0][0] + self._slack if self._heap else math.inf
                self._wake = trio.Event()
                with trio.move_on_at(self._wake_at):
                    await self._wake.wait()

    async def _background(self, due: _Due) -> None:
        node = due.node
        try:
            await self._bounded(node)
            self.stats.uploads += 1
            self.stats.failing.pop(node.ino, None)
        except Exception as exc:
            if not isinstance(exc, CosEncFsError | OSError):
                log.exception("unexpected error uploading %r", node.name)
            due.failures += 1
            self.stats.failures += 1
            self.stats.last_error = str(exc)
            self.stats.failing[node.ino] = str(exc)
            backoff = min(300.0, 2.0 ** min(due.failures, 9))
            log.warning(
                "upload of %r failed (%s); kept in the cache, retrying in %.0f s",
                node.name,
                exc,
                backoff,
            )
            if node.ino not in self._due:
                due.deadline = trio.current_time() + backoff
                self._due[node.ino] = due
        finally:
            self._running.pop(node.ino).set()
            again = self._due.get(node.ino)
            if again is not None:  # changed while uploading, or failed
                self._push(node.ino, again.deadline)

    async def wait_idle(self, node: Inode) -> None:
        """Wait until a background upload of ``node`` (if any) has finished."""
        ev = self._running.get(node.ino)
        if ev is not None:
            await ev.wait()
