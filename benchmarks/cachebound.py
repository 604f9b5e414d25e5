"""Workloads (j) and (k): reading a file larger than the cache budget.

(j) ``rand_read_big``: random 4 KiB reads in the big file with a cache
limit of a quarter of it (``--cache-size`` for cosencfs,
``--vfs-cache-max-size`` for rclone; s3fs keeps no cache): what is
downloaded for what is read (the goal: bytes down <= 4x bytes read).

(k) ``cache_bound``: a sequential read of the same file, 4x the cache
limit, sampling the cache directory's disk use while the file is open and
after it is closed.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType

from benchmarks.datasets import random_offsets
from benchmarks.peers import Peer
from benchmarks.results import Row
from benchmarks.system import run
from benchmarks.workloads import (
    Ctx,
    _cmp,
    _disk_usage,
    _mib_s,
    _ops_s,
    cold_remount,
    measure,
    preads,
)

#: The cache budget is the big file divided by this.
CACHE_FRACTION = 4
SAMPLE_INTERVAL = 0.05


class CacheSampler:
    """Samples the disk use of a cache directory in a thread; ``peak`` is the largest seen."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cache-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _disk_usage(self.peer.cache))
            self.samples += 1
            self._stop.wait(SAMPLE_INTERVAL)

    def __enter__(self) -> CacheSampler:
        if self.peer.has_cache:
            self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)


def _limited_remount(ctx: Ctx, peer: Peer) -> tuple[int, bool]:
    limit = ctx.sizes.big_file // CACHE_FRACTION
    peer.cache_limit = limit
    return limit, cold_remount(peer, clear_cache=True)


def rand_read_big(ctx: Ctx, peer: Peer) -> list[Row]:
    size, count = ctx.sizes.big_file, ctx.sizes.random_reads
    limit, dropped = _limited_remount(ctx, peer)
    offsets = random_offsets(size, count, seed=ctx.cfg.seed + 2)
    got: list[bytes] = []

    def read() -> None:
        got.extend(preads(peer.mnt / "big", offsets))

    try:
        with CacheSampler(peer) as sampler:
            m = measure(ctx, peer, "rand_read_big", read,
                        label=f"{count} random 4 KiB preads, cold, in a file 4x the cache limit"
                              f" ({limit >> 20} MiB)")  # fmt: skip
    finally:
        peer.cache_limit = None
    m.row.rate, m.row.unit = _ops_s(count, m.seconds), "ops/s"
    read_bytes = 4096 * count
    m.row.extra.update(page_cache_dropped=dropped, bytes_read=read_bytes, cache_limit=limit)
    if m.row.bytes_down is not None:
        m.row.extra["down_per_read"] = round(m.row.bytes_down / read_bytes, 2)
    if peer.has_cache:
        m.row.extra["cache_peak"] = sampler.peak
    with open(ctx.src.big, "rb") as f:
        want = [os.pread(f.fileno(), 4096, off) for off in offsets]
    if want != got:
        m.row.error = "random reads returned wrong data"
    return [m.row]


def cache_bound(ctx: Ctx, peer: Peer) -> list[Row]:
    size = ctx.sizes.big_file
    limit, dropped = _limited_remount(ctx, peer)
    src = peer.mnt / "big"
    try:
        with CacheSampler(peer) as sampler:
            m = measure(
                ctx, peer, "cache_bound",
                lambda: run(["dd", f"if={src}", "of=/dev/null", "bs=1M", "status=none"],
                            timeout=ctx.sizes.timeout),
                label=f"cold sequential read of {size >> 20} MiB, 4x the cache limit"
                      f" ({limit >> 20} MiB): cache directory size",
            )  # fmt: skip
            while_open = sampler.peak
        m.row.rate, m.row.unit = _mib_s(size, m.seconds), "MiB/s"
        m.row.extra.update(page_cache_dropped=dropped, cache_limit=limit)
        if peer.has_cache:
            m.row.extra["cache_peak"] = while_open
            after = m.row.extra["cache_after"] = _disk_usage(peer.cache)
            m.row.note = (f"cache dir peak {while_open >> 20} MiB, after {after >> 20} MiB,"
                          f" limit {limit >> 20} MiB")  # fmt: skip
        if not _cmp(src, ctx.src.big, ctx.sizes.timeout):
            m.row.error = "data read back differs from the source"
    finally:
        peer.cache_limit = None
    return [m.row]
