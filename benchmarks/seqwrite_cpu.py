"""Daemon CPU per sequential write of a large file until it is in the bucket (issues 17, 14).

One local COS server (``--rtt-ms``, ``--https`` as benchmarks.run) and a
cosencfs mount of it (the suite's own, as benchmarks.write_cpu). Each run
mounts with an empty cache and, from this process, writes ``--size-mib`` MiB
of random bytes in 1 MiB writes (what ``dd bs=1M conv=fsync`` of the
``seq_write`` row does), fsyncs (which returns once the object is in the
bucket), and reports the daemon's CPU for all of it (user + system from
``/proc/PID/stat``: all threads, and the loop thread alone, which answers the
FUSE requests), per MiB, with the FUSE and COS requests it took and the
daemon's peak RSS during the write (VmHWM, reset first); and the local
server's CPU meanwhile (its own process, same two CPUs) and how long the
final ``fsync`` took (the last parts and the completion).

``--untagged`` writes with the benchmark-only ``--x-bench-untagged`` (no
chunk tags: what the tags cost). ``--baseline REV`` measures that revision
too, interleaved (this tree, base, base, this tree, ...) so drift hits both
alike; the ratios this tree / base of each pair are reported with the
medians. ``--profile DIR`` records each run of this tree with py-spy.

    python -m benchmarks.seqwrite_cpu --runs 5 --baseline main
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import resource
import time
from pathlib import Path
from typing import Any

from benchmarks.cpurun import (
    add_common_args,
    counts_diff,
    fuse_requests,
    loop_cpu,
    mount_stats,
    run_medians,
)
from benchmarks.integrity_cost import cpu_seconds
from benchmarks.peers import CosencfsPeer
from benchmarks.profiling import Profiler
from benchmarks.system import BenchError

MIB = 1024 * 1024
_MEDIANS = (
    "daemon_s",
    "loop_s",
    "daemon_ms_per_mib",
    "mib_per_s",
    "peak_rss_mib",
    "writer_s",
    "server_s",
    "fsync_s",
)


def _vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmHWM for {pid}")


def one_run(
    peer: CosencfsPeer, size: int, block: memoryview, tag: str, profiler: Profiler | None
) -> dict[str, Any]:
    """Write ``size`` bytes front to back and fsync; the daemon's CPU and requests for it."""
    server = peer.server
    if server is None:
        raise BenchError("no server")
    peer.mount(clear_cache=True)
    try:
        path = peer.mnt / f"{tag}.bin"
        before = server.newest(size)
        stats0 = mount_stats(peer)
        # Peak RSS of the write alone (VmHWM reset; what big_write_rss reads).
        Path(f"/proc/{peer.pid}/clear_refs").write_text("5")
        cpu0, loop0 = cpu_seconds(peer.pid), loop_cpu(peer.pid)
        # The local server's CPU too (its own process, on the same two CPUs).
        spid = server.proc.pid if server.proc is not None else None
        srv0 = cpu_seconds(spid) if spid else 0.0
        # The writer's own CPU: the kernel's side of each write(2) (the copy
        # into page-cache pages on the cached path) is charged to it.
        me0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        with profiler.record(peer.pid, tag) if profiler else contextlib.nullcontext():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for pos in range(0, size, len(block)):
                    n = min(len(block), size - pos)
                    if os.write(fd, block[:n]) != n:
                        raise BenchError(f"short write at {pos}")
                synced = time.perf_counter()
                os.fsync(fd)
                synced = time.perf_counter() - synced
            finally:
                os.close(fd)
        wall = time.perf_counter() - start
        me1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu1, loop1 = cpu_seconds(peer.pid), loop_cpu(peer.pid)
        srv1 = cpu_seconds(spid) if spid else 0.0
        stats1 = mount_stats(peer)
        # Where the streamed parts came from (held in memory, read back, from
        # the file) and the writes' waits for a part buffer (none on older trees).
        buffers = stats1["uploads"].get("part_buffers", {})
        parts0 = stats0["uploads"].get("part_buffers", {})
        parts = {k: round(v - parts0.get(k, 0), 3) for k, v in buffers.items()}
        peak = _vm_hwm_mib(peer.pid)
        if server.newest(size) <= before:
            raise BenchError(f"{peer.name}: fsync returned before the object was in the bucket")
    finally:
        peer.unmount()
    fuse = counts_diff(fuse_requests(stats0), fuse_requests(stats1))
    cos = counts_diff(stats0["store"]["requests"], stats1["store"]["requests"])
    mib = size / MIB
    return {
        "daemon_s": cpu1 - cpu0,
        "loop_s": loop1 - loop0,
        "writer_s": me1.ru_utime + me1.ru_stime - me0.ru_utime - me0.ru_stime,
        "daemon_ms_per_mib": (cpu1 - cpu0) * 1000 / mib,
        "server_s": srv1 - srv0,
        "fsync_s": synced,
        "mib_per_s": mib / wall,
        "fuse": {k: v for k, v in fuse.items() if v},
        "cos": {k: v for k, v in cos.items() if v},
        "cos_total": sum(cos.values()),
        "peak_rss_mib": peak,
        "parts": parts,
        "load": os.getloadavg()[0],
    }


def _line(res: dict[str, Any]) -> str:
    return (
        f"daemon {res['daemon_s']:.2f} s CPU ({res['daemon_ms_per_mib']:.2f} ms/MiB; loop thread "
        f"{res['loop_s']:.2f} s), writer {res['writer_s']:.2f} s CPU, "
        f"server {res['server_s']:.2f} s CPU, fsync {res['fsync_s']:.2f} s, "
        f"{res['mib_per_s']:.0f} MiB/s, FUSE writes {res['fuse'].get('write', 0)} "
        f"getxattrs {res['fuse'].get('getxattr', 0)}, "
        f"COS {res['cos_total']} {json.dumps(res['cos'])}, "
        f"peak RSS {res['peak_rss_mib']:.0f} MiB, parts {json.dumps(res['parts'])}, "
        f"load {res['load']:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=256, help="file size in MiB")
    p.add_argument("--untagged", action="store_true", help="write untagged (--x-bench-untagged)")
    add_common_args(p)
    args = p.parse_args(argv)
    size = args.size_mib * MIB
    # Page-aligned, as dd's buffer is: a direct write of an unaligned 1 MiB
    # spans 257 pages and the kernel splits it in two requests.
    aligned = mmap.mmap(-1, MIB)
    aligned[:] = os.urandom(MIB)
    block = memoryview(aligned)

    def one(peer: CosencfsPeer, r: int, tag: str, prof: Profiler | None) -> dict[str, Any]:
        if args.untagged:
            peer.extra = ["--x-bench-untagged"]
        return one_run(peer, size, block, tag, prof)

    header = {"size_mib": args.size_mib, "untagged": args.untagged, "load": os.getloadavg()}
    return run_medians(
        args, "cosencfs-seqwrite-cpu-", one, _line, _MEDIANS, header,
        lambda med: (
            f", {args.size_mib} MiB: daemon {med['daemon_s']:.3f} s CPU "
            f"({med['daemon_ms_per_mib']:.2f} ms/MiB; loop thread {med['loop_s']:.3f} s), "
            f"writer {med['writer_s']:.3f} s CPU, server {med['server_s']:.3f} s CPU, "
            f"fsync {med['fsync_s']:.3f} s, "
            f"{med['mib_per_s']:.0f} MiB/s, peak RSS {med['peak_rss_mib']:.0f} MiB"
        ),
        lambda ratio: (
            f"daemon CPU {ratio['daemon_s']:.3f}, loop thread {ratio['loop_s']:.3f}, "
            f"writer CPU {ratio['writer_s']:.3f}, "
            f"throughput {ratio['mib_per_s']:.3f}"
        ),
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
