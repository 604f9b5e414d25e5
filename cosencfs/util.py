"""Small trio helpers shared by the layers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf of an exception group that is not a cancellation."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            leaf = first_error(exc)
            if not isinstance(leaf, trio.Cancelled):
                return leaf
        elif not isinstance(exc, trio.Cancelled):
            return exc
    return group


@asynccontextmanager
async def open_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery whose failure surfaces as the first real exception.

    Trio wraps child errors in ExceptionGroups; the layers above map single
    project exceptions to errno values, so they want the error itself.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        leaf = first_error(group)
        if leaf is group:
            raise
        raise leaf from group


async def acquire(lock: trio.Lock | trio.CapacityLimiter) -> None:
    """Take ``lock`` (or one of the limiter's tokens), free ones at once.

    trio's ``acquire`` (and ``async with``) passes through the scheduler even
    when nothing is held: a pass of its run loop and an epoll call, several
    per small file committed (issue 18).  A held one is still waited for,
    fairly; the caller releases it as after ``acquire``.
    """
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()
