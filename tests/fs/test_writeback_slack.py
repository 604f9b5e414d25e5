"""Write-back starts the uploads due close together in one wake-up
(cosencfs/fs/writeback.py, ``SLACK_SHARE``): never before a file's deadline,
at most the slack after it."""

from __future__ import annotations

from typing import cast

import trio
import trio.testing

from cosencfs.fs import writeback
from cosencfs.fs.inode import Inode
from cosencfs.fs.writeback import WriteBack


class _Node:
    def __init__(self, ino: int) -> None:
        self.ino = ino
        self.dirty = False
        self.unlinked = False
        self.name = f"f{ino}"


async def _run(delay: float, n: int, gap: float) -> tuple[WriteBack, dict[int, float], float]:
    started: dict[int, float] = {}

    async def commit(node: Inode) -> None:
        started[node.ino] = trio.current_time()

    wb = WriteBack(commit, delay=delay, max_dirty_age=60.0, limiter=trio.CapacityLimiter(16))
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(wb.run)
        for i in range(n):
            wb.schedule(cast(Inode, _Node(i)))
            await trio.sleep(gap)
        while len(started) < n:  # noqa: ASYNC110 - the clock jumps
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    return wb, started, t0


def test_files_closed_in_a_row_share_wakeups_and_keep_their_delay() -> None:
    async def main() -> None:
        delay, n, gap = 1.0, 200, 0.002
        wb, started, t0 = await _run(delay, n, gap)
        slack = min(writeback.SLACK_MAX, delay * writeback.SLACK_SHARE)
        assert slack > 0
        for i in range(n):
            due = t0 + i * gap + delay
            assert due - 1e-9 <= started[i] <= due + slack + 1e-6, i
        # One wake-up per slack's worth of files, not one per file.
        assert wb.wakeups <= n * gap / slack + 5

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_no_delay_means_no_slack() -> None:
    async def main() -> None:
        _wb, started, t0 = await _run(0.0, 20, 0.01)
        for i in range(20):
            assert abs(started[i] - (t0 + i * 0.01)) < 1e-6

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
