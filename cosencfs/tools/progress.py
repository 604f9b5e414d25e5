"""How a bucket-wide run shows itself: a progress bar or log lines, keys fit to print, its cost.

``Progress`` draws a ``tqdm`` bar on stderr when stderr is a terminal and
otherwise logs one line every ``log_interval`` seconds, so a run under
systemd or cron leaves a readable trace instead of carriage-return noise.
``requests_line`` is the end of such a run: what it cost.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, NoReturn, TextIO

from cosencfs.store.counters import CounterSnapshot

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger(__name__)

__all__ = ["Progress", "display_key", "requests_line"]


def _new_bar(desc: str, unit: str, stream: TextIO) -> tqdm[NoReturn]:
    # Imported only when a terminal will show the bar.
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(desc=desc, total=0, unit=unit, file=stream, dynamic_ncols=True, leave=True)


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
        self._bar: tqdm[NoReturn] | None = None
        if enabled and _isatty(self._stream):
            self._bar = _new_bar(desc, unit, self._stream)

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


def requests_line(used: CounterSnapshot) -> str:
    """One line on what a run cost: requests by kind, failures, body bytes."""
    names = {
        "ListObjects": "LIST",
        "HeadObject": "HEAD",
        "GetObject": "GET",
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
