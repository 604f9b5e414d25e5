"""Logging: one line per event on stderr, journald-friendly, debug per subsystem."""

from __future__ import annotations

import logging
import os
import sys
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
