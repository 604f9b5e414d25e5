"""Logging: one line per event on stderr, journald-friendly, debug per subsystem."""

from __future__ import annotations

import logging
import os
import sys
from collections import OrderedDict
from collections.abc import Iterable

#: ``--debug SUBSYSTEM`` names -> logger names.
SUBSYSTEMS = {
    "store": "cosencfs.store",
    "cache": "cosencfs.cache",
    "fs": "cosencfs.fs",
    "fuse": "cosencfs.fuse_ops",
    "mount": "cosencfs.mount",
    "server": "cosencfs.server",
    "all": "cosencfs",
}


def setup_logging(level: str = "INFO", debug: Iterable[str] = ()) -> None:
    under_journald = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = (
        "%(levelname)s %(name)s: %(message)s"
        if under_journald
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in debug:
        for part in name.split(","):
            logger = SUBSYSTEMS.get(part.strip())
            if logger is None:
                raise SystemExit(
                    f"cosencfs: unknown debug subsystem {part!r} "
                    f"(choose from {', '.join(sorted(SUBSYSTEMS))})"
                )
            logging.getLogger(logger).setLevel(logging.DEBUG)
    # The SDK logs signing keys at DEBUG; it stays silent whatever is asked.
    logging.getLogger("qcloud_cos").setLevel(logging.CRITICAL + 1)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


class LogThrottle:
    """Whether a failure is worth a log line: once per ``every`` seconds each.

    Entries older than the interval are forgotten, and at most
    ``max_entries`` are kept (oldest dropped first: only a flood of distinct
    failures can log one twice a minute), so a long-lived mount stays small.
    """

    def __init__(self, every: float, max_entries: int = 10_000) -> None:
        self.every = every
        self.max_entries = max_entries
        #: Key -> when it was logged; oldest first (a key is only added when absent).
        self._last: OrderedDict[tuple[str, str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def should_log(self, what: tuple[str, str, str], now: float) -> bool:
        self._prune(now)
        if what in self._last:
            return False
        self._last[what] = now
        if len(self._last) > self.max_entries:
            self._last.popitem(last=False)
        return True

    def _prune(self, now: float) -> None:
        while self._last:
            at = next(iter(self._last.values()))
            if now - at < self.every:
                return
            self._last.popitem(last=False)
