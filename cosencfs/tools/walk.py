"""The bounded, paged walk over every object under a prefix that fsck and rekey share.

``walk_bucket`` lists a prefix one page at a time (``LIST_PAGE_MAX`` keys)
and runs a handler per object in a trio nursery whose tasks are bounded by a
``CapacityLimiter``: the next page is only requested once all but
``concurrency`` objects of the current one have been handed to a task, so
memory stays bounded however large the bucket is. ``until_stopped`` says
why such a walk stopped early, if it did.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from cosencfs.errors import StoreError
from cosencfs.store.base import LIST_PAGE_MAX, ObjectInfo, ObjectStore
from cosencfs.tools.progress import Progress

log = logging.getLogger(__name__)

__all__ = ["STOP_INTERRUPTED", "Handler", "Triage", "until_stopped", "walk_bucket"]


#: Decides in listing order, without I/O, whether an object needs the handler.
Triage = Callable[[ObjectInfo], bool]
Handler = Callable[[ObjectInfo], Awaitable[None]]


async def walk_bucket(
    store: ObjectStore,
    prefix: str,
    handle: Handler,
    *,
    concurrency: int,
    progress: Progress,
    triage: Triage | None = None,
) -> int:
    """Run ``handle`` for every object under ``prefix``; return how many were listed.

    ``triage`` sees every listed object in key order in the listing task
    (for checks that need the order, and to skip objects cheaply); objects
    for which it returns False are counted as done without a task.  At most
    ``concurrency`` handlers run at once.  ``handle`` must deal with its own
    expected errors: an exception escaping it cancels the walk.
    """
    limiter = trio.CapacityLimiter(max(1, concurrency))
    listed = 0

    async def run_one(info: ObjectInfo, token: object) -> None:
        try:
            await handle(info)
        finally:
            limiter.release_on_behalf_of(token)
            progress.advance()

    async def list_and_start(nursery: trio.Nursery) -> None:
        # One LIST page at a time; a task per object, bounded by the limiter,
        # so the next page is fetched once all but `concurrency` are done.
        nonlocal listed
        marker = ""
        while True:
            page = await store.list_objects(prefix, "", marker, LIST_PAGE_MAX)
            listed += len(page.objects)
            progress.add_total(len(page.objects))
            for info in page.objects:
                if triage is not None and not triage(info):
                    progress.advance()
                    continue
                token = object()
                await limiter.acquire_on_behalf_of(token)
                nursery.start_soon(run_one, info, token)
            if not page.truncated or not page.next_marker or page.next_marker == marker:
                return
            marker = page.next_marker

    try:
        async with trio.open_nursery() as nursery:
            await list_and_start(nursery)
    except BaseExceptionGroup as group:
        # A single failure (a LIST that outlived its retries, Ctrl-C) is
        # raised as itself, so that callers can catch it by type.
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise
    return listed


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out


STOP_INTERRUPTED = "interrupted"


async def until_stopped(run: Callable[[], Awaitable[object]]) -> str:
    """Run a bucket walk; "" when it went through, else why it stopped early."""
    try:
        await run()
    except KeyboardInterrupt:
        return STOP_INTERRUPTED
    except StoreError as exc:
        # A LIST (or another request the walk cannot do without) that
        # outlived its retries: report what was done so far.
        log.error("stopped early: %s", exc)
        return f"stopped early: {exc}"
    return ""
