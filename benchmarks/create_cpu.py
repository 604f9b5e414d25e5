"""Daemon CPU per small file created, until in the bucket (issue 17 target 3, issue 18).

One local COS server (``--rtt-ms``, ``--https`` as benchmarks.run) and a
cosencfs mount of it (the suite's own). Each run mounts with an empty cache,
creates ``--files`` files of ``--size`` bytes from this process one after
the other (open, write, close: what benchmarks/scale.py does), asks the mount
to sync and waits until every file is an object in the bucket. Reported per
file: the daemon's and the local server's CPU (user + system from
``/proc/PID/stat``, all threads: robust to a loaded machine where wall time
is not), the FUSE requests the daemon answered (its ``stats`` counters, by
operation), and the COS requests it sent.

``--baseline REV`` measures that revision too (git archive, as
``benchmarks.run --baseline``), interleaved (this tree, base, base, this
tree, ...) so drift hits both alike. ``--profile DIR`` records each run of
this tree with py-spy (``python -m benchmarks.profiling FILE`` summarizes).

    python -m benchmarks.create_cpu --files 1000 --runs 3 --baseline main
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
from benchmarks.integrity_cost import cpu_seconds
from benchmarks.peers import CosencfsPeer
from benchmarks.profiling import Profiler
from benchmarks.system import BenchError

WAIT = 600.0


def one_run(
    peer: CosencfsPeer, n: int, size: int, tag: str, profiler: Profiler | None
) -> dict[str, Any]:
    """Create ``n`` files through a fresh mount of ``peer``; CPU and requests per file."""
    server = peer.server
    if server is None:
        raise BenchError("no server")
    server_pid = server.proc.pid if server.proc is not None else 0
    payload = os.urandom(size * 16)
    peer.mount(clear_cache=True)
    try:
        d = peer.mnt / tag
        d.mkdir()
        peer.sync()
        base = server.bucket().files
        time.sleep(0.5)  # let the mkdir's uploads and the mount's start-up settle
        before = mount_stats(peer)
        cpu_d, cpu_s, cpu_l = cpu_seconds(peer.pid), cpu_seconds(server_pid), loop_cpu(peer.pid)
        start = time.perf_counter()
        with profiler.record(peer.pid, tag) if profiler else contextlib.nullcontext():
            for i in range(n):
                with open(d / f"f{i:06d}", "wb") as f:
                    k = i % 16
                    f.write(payload[k * size : (k + 1) * size])
            peer.sync()
            deadline = time.monotonic() + WAIT
            while server.bucket().files < base + n:
                if time.monotonic() > deadline:
                    raise BenchError(f"{peer.name}: files not in the bucket after {WAIT} s")
                time.sleep(0.02)
        wall = time.perf_counter() - start
        used_d, used_s = cpu_seconds(peer.pid) - cpu_d, cpu_seconds(server_pid) - cpu_s
        used_l = loop_cpu(peer.pid) - cpu_l
        after = mount_stats(peer)
    finally:
        peer.unmount()
    fuse = counts_diff(fuse_requests(before), fuse_requests(after))
    cos = counts_diff(before["store"]["requests"], after["store"]["requests"])
    return {
        "daemon_ms_per_file": used_d * 1000 / n,
        "loop_ms_per_file": used_l * 1000 / n,
        "server_ms_per_file": used_s * 1000 / n,
        "seconds": wall,
        "files_per_s": n / wall,
        "fuse_per_file": sum(fuse.values()) / n if fuse else None,
        "fuse": {k: v for k, v in fuse.items() if v},
        "cos_per_file": sum(cos.values()) / n,
        "cos": {k: v for k, v in cos.items() if v},
        # Cache files the event loop had to make itself (none made ahead).
        "spare_missed": after["cache"].get("spare_files_missed", 0)
        - before["cache"].get("spare_files_missed", 0),
        "load": os.getloadavg()[0],
    }


_KEYS = ("daemon_ms_per_file", "loop_ms_per_file", "server_ms_per_file", "seconds", "files_per_s")


def _line(res: dict[str, Any]) -> str:
    fuse = res["fuse_per_file"]
    return (
        f"daemon {res['daemon_ms_per_file']:.3f} ms/file (loop thread "
        f"{res['loop_ms_per_file']:.3f}), server "
        f"{res['server_ms_per_file']:.3f} ms/file, {res['files_per_s']:.0f} files/s, "
        f"FUSE {'?' if fuse is None else f'{fuse:.2f}'}/file {json.dumps(res['fuse'])}, "
        f"COS {res['cos_per_file']:.3f}/file {json.dumps(res['cos'])}, "
        f"spare files missed {res['spare_missed']}, load {res['load']:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--size", type=int, default=2048, help="bytes per file")
    add_common_args(p)
    args = p.parse_args(argv)

    def one(peer: CosencfsPeer, r: int, tag: str, prof: Profiler | None) -> dict[str, Any]:
        return one_run(peer, args.files, args.size, tag, prof)

    header = {"files": args.files, "size": args.size}
    return run_medians(
        args, "cosencfs-create-cpu-", one, _line, _KEYS, header,
        lambda med: (
            f": daemon {med['daemon_ms_per_file']:.3f} ms/file (loop thread "
            f"{med['loop_ms_per_file']:.3f}), server "
            f"{med['server_ms_per_file']:.3f} ms/file, {med['files_per_s']:.0f} files/s"
        ),
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
