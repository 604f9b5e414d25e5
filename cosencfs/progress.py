"""Progress of bucket-wide commands, and the bounded parallel walk they share.

``Progress`` draws a ``tqdm`` bar on stderr when stderr is a terminal and
otherwise logs one line every ``log_interval`` seconds, so a run under
systemd or cron leaves a readable trace instead of carriage-return noise.

``walk_bucket`` lists a prefix one page at a time (``LIST_PAGE_MAX`` keys)
and runs a handler per object in a trio nursery whose tasks are bounded by a
``CapacityLimiter``: the next page is only requested once all but
``concurrency`` objects of the current one have been handed to a task, so
memory stays bounded however large the bucket is.

``until_stopped`` and ``requests_line`` are the end of such a run: why it
stopped early, if it did, and what it cost.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TextIO

import trio

from cosencfs.errors import StoreError
from cosencfs.store.base import LIST_PAGE_MAX, ObjectInfo, ObjectStore
from cosencfs.store.counters import CounterSnapshot

log = logging.getLogger(__name__)

__all__ = [
    "STOP_INTERRUPTED",
    "Progress",
    "display_key",
    "requests_line",
    "until_stopped",
    "walk_bucket",
]


def _load_tqdm() -> Any:
    # tqdm ships no type information; it is used through this one function.
    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]  # noqa: PLC0415

    return tqdm


def display_key(key: str) -> str:
    """An object key safe to print on a terminal (control characters escaped)."""
    if key.isprintable():
        return key
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in key)


class Progress:
    """Counts objects done out of objects listed so far (the total grows while listing)."""

    def __init__(
        self,
        desc: str,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        log_interval: float = 10.0,
        unit: str = "obj",
    ) -> None:
        self.desc = desc
        self.done = 0
        self.total = 0
        self._status: Mapping[str, int] = {}
        self._stream = stream if stream is not None else sys.stderr
        self._log_interval = log_interval
        self._last_log = time.monotonic()
        self._started = time.monotonic()
        self._bar: Any = None
        if enabled and _isatty(self._stream):
            self._bar = _load_tqdm()(
                desc=desc,
                total=0,
                unit=unit,
                file=self._stream,
                dynamic_ncols=True,
                leave=True,
            )

    @property
    def is_bar(self) -> bool:
        return self._bar is not None

    def add_total(self, n: int) -> None:
        self.total += n
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        else:
            self._maybe_log()

    def set_status(self, counts: Mapping[str, int]) -> None:
        """Counters shown after the bar (only the non-zero ones)."""
        self._status = dict(counts)
        if self._bar is not None:
            text = ", ".join(f"{k} {v}" for k, v in self._status.items() if v)
            self._bar.set_postfix_str(text, refresh=False)

    def write(self, line: str, file: TextIO | None = None) -> None:
        """Print a line (to stdout by default) without breaking the bar."""
        out = file if file is not None else sys.stdout
        if self._bar is not None:
            self._bar.write(line, file=out)
        else:
            print(line, file=out, flush=True)

    def _line(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self._status.items() if v)
        elapsed = time.monotonic() - self._started
        return f"{self.desc}: {self.done} of {self.total} objects listed so far done in " + (
            f"{elapsed:.0f} s" + (f" ({counts})" if counts else "")
        )

    def _maybe_log(self) -> None:
        now = time.monotonic()
        if now - self._last_log >= self._log_interval:
            self._last_log = now
            log.info("%s", self._line())

    def close(self) -> None:
        if self._bar is not None:
            bar, self._bar = self._bar, None
            bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


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


def requests_line(used: CounterSnapshot) -> str:
    """One line on what a run cost: requests by kind, failures, body bytes."""
    names = {
        "ListObjects": "LIST",
        "HeadObject": "HEAD",
        "CopyObject": "COPY",
        "HeadBucket": "HEAD bucket",
        "ListMultipartUploads": "LIST uploads",
        "AbortMultipartUpload": "ABORT",
    }
    order = list(names)
    ops = sorted(used.requests, key=lambda op: (order.index(op) if op in order else len(order), op))
    parts = [f"{used.requests[op]} {names.get(op, op)}" for op in ops]
    failed = sum(used.failures.values())
    extra = f", {failed} failed" if failed else ""
    return (
        f"requests: {', '.join(parts) or 'none'} ({used.total_requests} in all{extra}); "
        f"{used.bytes_up} bytes up, {used.bytes_down} bytes down"
    )
