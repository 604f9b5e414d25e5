"""The daemon's CPU per cold sequential read, this tree against other revisions.

One local COS server (the suite's, with its latency model), one 256 MiB file
written through this tree's mount (and with ``--untagged`` a second one
written with the benchmark-only ``--x-bench-untagged``), then ``--runs``
rounds, interleaved: every mount (this tree, each ``--baseline REV``) reads
every file cold — empty cache directory, ``drop_caches``, then ``--settle``
seconds before ``dd bs=1M``.  Each row gives the median wall time and the
daemon's CPU time (user + system, all threads, from ``/proc/PID/stat``):
on a shared machine the CPU time is the steadier measure.

Why ``--settle``: on the benchmark VM, memory freed by ``drop_caches`` is
handed back to the host after about two seconds (virtio-balloon free page
reporting), and the first write into such a page then costs a fault in the
host.  Writing into the page cache right after the drop is cheap, a few
seconds later it is not: waiting makes every run pay alike (the suite's
quiet wait usually takes that long too).

``python -m benchmarks.read_cpu --runs 5 --baseline main --untagged``
is the figure in docs/performance.md ("Cold sequential read: one job per
piece").  ``--random 1000`` adds a row per file: that many random 4 KiB
``pread``s of the cold file (the suite's rand_read row: the whole-object
fetch), wall and daemon CPU alike.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.cpurun import loop_cpu
from benchmarks.datasets import random_offsets
from benchmarks.integrity_cost import cpu_seconds, write_file
from benchmarks.peers import BaselinePeer, CosencfsPeer
from benchmarks.profiling import Profiler
from benchmarks.server import LocalServer, Network
from benchmarks.system import drop_caches

MIB = 1 << 20


def mounts(root: Path, server: LocalServer, revs: list[str]) -> list[CosencfsPeer]:
    """This tree's mount, then one per revision, all of ``server`` with one key."""
    out: list[CosencfsPeer] = []
    for rev in ["", *revs]:
        if rev:
            base = BaselinePeer(root / f"base-{rev}", server.network)
            base.rev = rev
            base.name = f"cosencfs@{rev}"
            peer: CosencfsPeer = base
        else:
            peer = CosencfsPeer(root, server.network)
        peer.server = server
        for d in (peer.mnt, peer.cache, peer.logs):
            d.mkdir(parents=True, exist_ok=True)
        if out:
            shutil.copy(out[0].key_file, peer.key_file)
        peer.prepare()
        out.append(peer)
    return out


def write(peer: CosencfsPeer, name: str, size: int, extra: list[str]) -> None:
    peer.extra = extra
    peer.mount(clear_cache=True)
    try:
        write_file(peer.mnt / name, os.urandom(MIB), size)
    finally:
        peer.unmount()
        peer.extra = []


def read_cold(
    peer: CosencfsPeer,
    name: str,
    settle: float,
    offsets: list[int] | None = None,
    profiler: Profiler | None = None,
    tag: str = "",
) -> tuple[float, float, float, float]:
    """Wall, daemon CPU and loop-thread CPU seconds of ``dd`` reading ``name`` after
    a cold mount, and the mean size of the FUSE reads the daemon answered
    (``offsets``: 4 KiB ``pread``s there instead; ``profiler``: py-spy it as ``tag``)."""
    peer.mount(clear_cache=True)
    try:
        drop_caches()
        time.sleep(settle)
        pid = peer.pid
        cpu, loop = cpu_seconds(pid), loop_cpu(pid)
        reads = _fuse_reads(peer)
        record = profiler.record(pid, tag) if profiler else contextlib.nullcontext()
        with record:
            start = time.perf_counter()
            _read(peer, name, offsets)
            wall = time.perf_counter() - start
        cpu, loop = cpu_seconds(pid) - cpu, loop_cpu(pid) - loop
        after = _fuse_reads(peer)
        n = after[0] - reads[0]
        return wall, cpu, loop, (after[1] - reads[1]) / n if n else 0.0
    finally:
        peer.unmount()


def _fuse_reads(peer: CosencfsPeer) -> tuple[int, int]:
    """The FUSE reads the mount answered so far, and their bytes (0s: it does not say)."""
    data = peer.client_stats() or {}
    fuse = data.get("fuse", {})
    return int(fuse.get("reads", 0)), int(fuse.get("read_bytes", 0))


def _read(peer: CosencfsPeer, name: str, offsets: list[int] | None) -> None:
    if offsets is None:
        subprocess.run(
            ["dd", f"if={peer.mnt / name}", "of=/dev/null", "bs=1M"],
            check=True,
            capture_output=True,
            timeout=600,
        )
        return
    fd = os.open(peer.mnt / name, os.O_RDONLY)
    try:
        for off in offsets:
            os.pread(fd, 4096, off)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--rtt-ms", type=float, default=0.0)
    p.add_argument("--baseline", action="append", default=[], metavar="REV")
    p.add_argument("--untagged", action="store_true", help="an untagged file too")
    p.add_argument("--settle", type=float, default=5.0, metavar="SECONDS")
    p.add_argument("--random", type=int, default=0, metavar="N", help="N random 4 KiB reads too")
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy every read into DIR")
    args = p.parse_args(argv)
    profiler = None if args.profile is None else Profiler(args.profile, set())
    size = args.size_mib * MIB
    root = Path(tempfile.mkdtemp(prefix="cosencfs-read-cpu-", dir="/var/tmp"))
    network = Network(rtt_ms=args.rtt_ms)
    files = {"tagged": ("big", []), "untagged": ("big-untagged", ["--x-bench-untagged"])}
    if not args.untagged:
        del files["untagged"]
    results: dict[str, list[tuple[float, float, float, float]]] = {}
    modes = [False, True] if args.random else [False]
    offsets = random_offsets(size, args.random)
    try:
        with LocalServer(root / "server", root / "server.log", network) as server:
            peers = mounts(root, server, args.baseline)
            try:
                for name, extra in files.values():
                    write(peers[0], name, size, extra)
                for i in range(args.runs):
                    order = [(pr, f, r) for pr in peers for f in files.items() for r in modes]
                    for peer, (kind, (name, _)), rnd in order if i % 2 == 0 else order[::-1]:
                        label = f"{peer.name} {kind}" + (f" {args.random} random" if rnd else "")
                        tag = f"{label.replace(' ', '-').replace('@', '-')}-{i}"
                        got = read_cold(
                            peer, name, args.settle, offsets if rnd else None, profiler, tag
                        )
                        wall, cpu, loop, mean = got
                        results.setdefault(label, []).append(got)
                        rate = (
                            f"{args.random / wall:.0f} ops/s" if rnd
                            else f"{args.size_mib / wall:.0f} MiB/s"
                        )  # fmt: skip
                        print(
                            f"run {i} {label}: {wall:.2f} s, {rate}, "
                            f"daemon CPU {cpu:.2f} s, loop {loop:.2f} s, "
                            f"FUSE reads of {mean / 1024:.0f} KiB (load {os.getloadavg()[0]:.1f})",
                            flush=True,
                        )
            finally:
                for peer in peers:
                    peer.kill()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.size_mib} MiB, {network.label}, median of {args.runs} interleaved runs:")
    for label, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        loop = statistics.median(r[2] for r in runs)
        mean = statistics.median(r[3] for r in runs)
        cpus = ", ".join(f"{r[1]:.2f}" for r in runs)
        rate = (
            f"{args.random / wall:.0f} ops/s" if "random" in label
            else f"{args.size_mib / wall:.0f} MiB/s"
        )  # fmt: skip
        print(
            f"  {label}: {rate} ({wall:.2f} s), daemon CPU {cpu:.2f} s [{cpus}], "
            f"loop {loop:.2f} s, FUSE reads of {mean / 1024:.0f} KiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
