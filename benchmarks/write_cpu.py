"""Daemon CPU per small in-place write, and of the upload after (issue 17 target 5).

One local COS server (``--rtt-ms``, ``--https`` as benchmarks.run) and a
cosencfs mount of it (the suite's own, as benchmarks.create_cpu). Each run
mounts with an empty cache, writes a ``--file-mib`` MiB file with fsync and
waits until it is in the bucket (not measured), then from this process does
``--writes`` pwrites of 4 KiB at seeded random offsets through one
descriptor (what the ``rand_write`` workload does) and reports the daemon's
CPU for them per write (user + system from ``/proc/PID/stat``: all threads,
and the loop thread alone, which answers the FUSE requests); then fsync and
the wait until the new version is in the bucket, whose CPU (the upload copy
produced and sent) is reported separately, per run, with the wall-clock time
``fsync`` took and the time from the ``fsync`` call until the server holds
the new version ("fsync to in-bucket", polled every 2 ms).

``--baseline REV`` measures that revision too, interleaved (this tree, base,
base, this tree, ...) so drift hits both alike; the ratios this tree / base
of each pair are reported with the medians. ``--profile DIR`` records the
writes of each run of this tree with py-spy, and apart from them the fsync
and the upload it waits for (``...-fsync``).

    python -m benchmarks.write_cpu --writes 2000 --runs 3 --baseline main
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from typing import Any

from benchmarks.cpurun import (
    add_common_args,
    counts_diff,
    fuse_requests,
    loop_cpu,
    mount_stats,
    run_medians,
)
from benchmarks.datasets import random_offsets
from benchmarks.integrity_cost import cpu_seconds
from benchmarks.peers import CosencfsPeer
from benchmarks.profiling import Profiler
from benchmarks.system import BenchError

WAIT = 600.0
MIB = 1024 * 1024
BLOCK = 4096
_MEDIANS = (
    "daemon_us_per_write",
    "loop_us_per_write",
    "upload_ms",
    "writes_per_s",
    "fsync_ms",
    "bucket_ms",
)


def _wait_newer(peer: CosencfsPeer, size: int, than: int, poll: float = 0.02) -> None:
    server = peer.server
    if server is None:
        raise BenchError("no server")
    deadline = time.monotonic() + WAIT
    while server.newest(size) <= than:
        if time.monotonic() > deadline:
            raise BenchError(f"{peer.name}: the {size}-byte file not in the bucket after {WAIT} s")
        time.sleep(poll)


def one_run(
    peer: CosencfsPeer, size: int, n: int, seed: int, tag: str, profiler: Profiler | None
) -> dict[str, Any]:
    """Write a ``size``-byte file, then ``n`` random 4 KiB pwrites + fsync; CPU of each part."""
    server = peer.server
    if server is None:
        raise BenchError("no server")
    offsets = random_offsets(size, n, seed=seed)
    blocks = os.urandom(n * BLOCK)
    peer.mount(clear_cache=True)
    try:
        path = peer.mnt / f"{tag}.bin"
        before = server.newest(size)
        with open(path, "wb") as f:
            for pos in range(0, size, MIB):
                f.write(os.urandom(min(MIB, size - pos)))
            f.flush()
            os.fsync(f.fileno())
        _wait_newer(peer, size, before)
        peer.sync()
        time.sleep(0.5)  # let the set-up's upload and the mount's start-up settle
        base = server.newest(size)
        stats0 = mount_stats(peer)
        cpu0, loop0 = cpu_seconds(peer.pid), loop_cpu(peer.pid)
        fd = os.open(path, os.O_RDWR)
        try:
            start = time.perf_counter()
            with profiler.record(peer.pid, tag) if profiler else contextlib.nullcontext():
                for i, off in enumerate(offsets):
                    if os.pwrite(fd, blocks[i * BLOCK : (i + 1) * BLOCK], off) != BLOCK:
                        raise BenchError(f"short pwrite at {off}")
            wall = time.perf_counter() - start
            cpu1, loop1 = cpu_seconds(peer.pid), loop_cpu(peer.pid)
            stats1 = mount_stats(peer)
            fsync_prof = profiler.record(peer.pid, f"{tag}-fsync") if profiler else None
            with fsync_prof or contextlib.nullcontext():
                if fsync_prof is not None:
                    time.sleep(0.5)  # py-spy attached before the fsync (not timed)
                synced = time.perf_counter()
                os.fsync(fd)
                fsync_wall = time.perf_counter() - synced
                _wait_newer(peer, size, base, poll=0.002)
                bucket_wall = time.perf_counter() - synced
        finally:
            os.close(fd)
        cpu2 = cpu_seconds(peer.pid)
        stats2 = mount_stats(peer)
    finally:
        peer.unmount()
    fuse = counts_diff(fuse_requests(stats0), fuse_requests(stats1))
    cos = counts_diff(stats1["store"]["requests"], stats2["store"]["requests"])
    return {
        "daemon_us_per_write": (cpu1 - cpu0) * 1e6 / n,
        "loop_us_per_write": (loop1 - loop0) * 1e6 / n,
        "upload_ms": (cpu2 - cpu1) * 1000,
        "writes_per_s": n / wall,
        "fsync_ms": fsync_wall * 1000,
        "bucket_ms": bucket_wall * 1000,
        "fuse": {k: v for k, v in fuse.items() if v},
        "cos_upload": {k: v for k, v in cos.items() if v},
        "load": os.getloadavg()[0],
    }


def _line(res: dict[str, Any]) -> str:
    return (
        f"daemon {res['daemon_us_per_write']:.1f} us/write (loop thread "
        f"{res['loop_us_per_write']:.1f}), {res['writes_per_s']:.0f} writes/s, upload "
        f"{res['upload_ms']:.0f} ms CPU, fsync {res['fsync_ms']:.0f} ms, in the bucket "
        f"{res['bucket_ms']:.0f} ms after fsync began, FUSE {json.dumps(res['fuse'])}, "
        f"COS after fsync {json.dumps(res['cos_upload'])}, load {res['load']:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--file-mib", type=int, default=64, help="file size in MiB")
    p.add_argument("--writes", type=int, default=2000, help="random 4 KiB pwrites per run")
    p.add_argument("--seed", type=int, default=43)
    add_common_args(p)
    args = p.parse_args(argv)
    size = args.file_mib * MIB

    def one(peer: CosencfsPeer, r: int, tag: str, prof: Profiler | None) -> dict[str, Any]:
        return one_run(peer, size, args.writes, args.seed + r, tag, prof)

    header = {"file_mib": args.file_mib, "writes": args.writes}
    return run_medians(
        args, "cosencfs-write-cpu-", one, _line, _MEDIANS, header,
        lambda med: (
            f": daemon {med['daemon_us_per_write']:.1f} us/write (loop thread "
            f"{med['loop_us_per_write']:.1f}), upload {med['upload_ms']:.0f} ms CPU, "
            f"{med['writes_per_s']:.0f} writes/s, fsync {med['fsync_ms']:.0f} ms, "
            f"fsync to in-bucket {med['bucket_ms']:.0f} ms"
        ),
        lambda ratio: (
            f"daemon per write {ratio['daemon_us_per_write']:.3f}, loop thread "
            f"{ratio['loop_us_per_write']:.3f}, upload {ratio['upload_ms']:.3f}, "
            f"fsync {ratio['fsync_ms']:.3f}, fsync to in-bucket {ratio['bucket_ms']:.3f}"
        ),
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
