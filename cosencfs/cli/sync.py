"""``cosencfs sync``: upload everything dirty in a running mount and wait."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

from cosencfs.cli.stats import mib, read_stats
from cosencfs.fs.control import XATTR_SYNC


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Upload everything dirty and wait, with a progress bar on a terminal."""
    began = time.monotonic()
    start = read_stats(args.mountpoint)["dirty"]
    result: dict[str, OSError] = {}

    def work() -> None:
        try:
            os.setxattr(args.mountpoint, XATTR_SYNC, b"1")
        except OSError as exc:
            result["error"] = exc

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    show = not args.quiet and sys.stderr.isatty() and start["files"] > 0
    bar = None
    if show:
        from tqdm import tqdm  # noqa: PLC0415 - only on a terminal

        bar = tqdm(total=start["bytes"], unit="B", unit_scale=True, desc="uploading")
    while worker.is_alive():
        worker.join(0.2)
        if bar is not None:
            left = read_stats(args.mountpoint)["dirty"]["bytes"]
            bar.n = max(0, start["bytes"] - left)
            bar.refresh()
    if bar is not None:
        if "error" not in result:
            bar.n = start["bytes"]
        bar.close()
    if "error" in result:
        s = read_stats(args.mountpoint)
        print(
            f"cosencfs: sync failed: {s['dirty']['files']} files still dirty; "
            f"last error: {s['uploads']['last_error'] or result['error'].strerror}",
            file=sys.stderr,
        )
        return 1
    if not args.quiet:
        print(
            f"synced {start['files']} files ({mib(start['bytes'])}) in "
            f"{time.monotonic() - began:.1f} s",
            file=sys.stderr,
        )
    return 0
