"""What integrity tags cost a mount: time and requests, tagged against untagged.

Two cosencfs mounts of one local COS server (the benchmark suite's, with its
latency model: ``--rtt-ms``, ``--https``), one writing tagged objects (the
default) and one with the benchmark's own switch ``--x-bench-untagged``,
measured interleaved (tagged, untagged, untagged, tagged, ...) so that drift
on a shared machine hits both alike:

- sequential write of ``--size-mib`` until it is in the bucket (write, fsync);
- sequential cold read of it (a new mount with an empty cache directory);
- requests: writing a file of ``--small-kib`` (tags inline: no extra
  request), writing a large file (its companion: one PUT) and opening it
  cold (one GET), from the mount's own request counters (``cosencfs stats``).

Each row is the median of ``--runs`` runs, with the spread (min-max), per
network; the daemon's CPU time (user + system) is shown beside the wall
time, since on a shared machine it is the steadier of the two.
``--profile DIR`` records every timed step with py-spy (benchmarks/profiling.py).
``python -m benchmarks.integrity_cost --runs 5 --rtt-ms 0,10`` is the figure
quoted in docs/format.md, 12.11.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.cpurun import add_workdir_base, run_all
from benchmarks.peers import CosencfsPeer
from benchmarks.profiling import Profiler
from benchmarks.server import LocalServer, Network

MIB = 1024 * 1024
MODES = ("tagged", "untagged")
_TICK = os.sysconf("SC_CLK_TCK")


def make_peer(root: Path, server: LocalServer, mode: str) -> CosencfsPeer:
    """A cosencfs mount (the suite's own) of ``server``, tagged or not."""
    peer = CosencfsPeer(root / mode, server.network)
    peer.server = server
    for d in (peer.mnt, peer.cache, peer.logs):
        d.mkdir(parents=True, exist_ok=True)
    peer.prepare()
    if mode == "untagged":
        peer.extra = ["--x-bench-untagged"]
    return peer


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


@contextlib.contextmanager
def measured(
    peer: CosencfsPeer, profiler: Profiler | None, name: str, out: dict[str, float], what: str
) -> Iterator[None]:
    """Wall time and the daemon's CPU time of the block, into ``out[what + "_s"/"_cpu"]``."""
    pid = peer.pid
    with profiler.record(pid, name) if profiler is not None else contextlib.nullcontext():
        cpu = cpu_seconds(pid)
        start = time.perf_counter()
        yield
        out[f"{what}_s"] = time.perf_counter() - start
        out[f"{what}_cpu"] = cpu_seconds(pid) - cpu


def requests_of(mnt: Path) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-m", "cosencfs", "stats", "--json", str(mnt)],
        capture_output=True,
        check=True,
    )
    out: dict[str, int] = json.loads(done.stdout)["store"]["requests"]
    return out


def spent(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)
    }


def write_file(path: Path, block: bytes, size: int) -> None:
    with path.open("wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


def read_file(path: Path) -> None:
    with path.open("rb") as f:
        while f.read(MIB):
            pass


def one_run(
    peer: CosencfsPeer, size: int, block: bytes, name: str, profiler: Profiler | None
) -> dict[str, float]:
    out: dict[str, float] = {}
    peer.mount(clear_cache=True)
    try:
        with measured(peer, profiler, f"write-{name}", out, "write"):
            write_file(peer.mnt / name, block, size)
    finally:
        peer.unmount()
    peer.mount(clear_cache=True)
    try:
        with measured(peer, profiler, f"read-{name}", out, "read"):
            read_file(peer.mnt / name)
    finally:
        peer.unmount()
    return out


def request_costs(
    peer: CosencfsPeer, mode: str, small: int, large: int, block: bytes
) -> dict[str, Any]:
    # Names of their own: the two mounts share the bucket, and replacing an
    # object costs requests that creating one does not.
    peer.mount(clear_cache=True)
    try:
        before = requests_of(peer.mnt)
        write_file(peer.mnt / f"small-{mode}", block[:small], small)
        mid = requests_of(peer.mnt)
        write_file(peer.mnt / f"large-{mode}", block, large)
        after = requests_of(peer.mnt)
    finally:
        peer.unmount()
    peer.mount(clear_cache=True)
    try:
        opened = requests_of(peer.mnt)
        with (peer.mnt / f"large-{mode}").open("rb") as f:
            f.read(4096)
        first = requests_of(peer.mnt)
    finally:
        peer.unmount()
    return {
        "small_write": spent(before, mid),
        "large_write": spent(mid, after),
        "large_first_open_read": spent(opened, first),
    }


def run_network(
    root: Path, net: Network, args: argparse.Namespace, block: bytes, profiler: Profiler | None
) -> dict[str, Any]:
    size = args.size_mib * MIB
    slug = f"{net.rtt_ms:g}ms-{'https' if net.https else 'http'}"
    work = root / slug
    with LocalServer(work / "server", root / f"server-{slug}.log", net) as server:
        peers = {m: make_peer(work, server, m) for m in MODES}
        try:
            runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
            for i in range(args.runs):
                for mode in MODES if i % 2 == 0 else MODES[::-1]:
                    name = f"{slug}-{mode}-{i}"
                    runs[mode].append(one_run(peers[mode], size, block, name, profiler))
            costs = {}
            if not args.no_requests:
                costs = {
                    m: request_costs(p, m, args.small_kib * 1024, 24 * MIB, block)
                    for m, p in peers.items()
                }
        finally:
            for p in peers.values():
                p.kill()
    result: dict[str, Any] = {"network": net.label, "runs": runs, "requests": costs}
    for what in ("write", "read"):
        for unit in ("s", "cpu"):
            vals = {m: [r[f"{what}_{unit}"] for r in runs[m]] for m in MODES}
            med = {m: statistics.median(v) for m, v in vals.items()}
            result[f"{what}_{unit}"] = {
                "median": med,
                "spread": {m: (min(v), max(v)) for m, v in vals.items()},
                "ratio": med["tagged"] / med["untagged"] if med["untagged"] else None,
            }
    return result


def report(result: dict[str, Any], size_mib: int, runs: int) -> None:
    print(f"{result['network']}: {size_mib} MiB, median of {runs} interleaved runs (min-max)")
    labels = {"write": "sequential write until in bucket", "read": "cold sequential read"}
    for what, label in labels.items():
        wall, cpu = result[f"{what}_s"], result[f"{what}_cpu"]
        med, spread = wall["median"], wall["spread"]
        print(
            f"  {label}: tagged {med['tagged']:.2f} s ({spread['tagged'][0]:.2f}-"
            f"{spread['tagged'][1]:.2f}), untagged {med['untagged']:.2f} s "
            f"({spread['untagged'][0]:.2f}-{spread['untagged'][1]:.2f}), "
            f"ratio {wall['ratio']:.3f}; daemon CPU tagged {cpu['median']['tagged']:.2f} s, "
            f"untagged {cpu['median']['untagged']:.2f} s, ratio {cpu['ratio'] or 0:.3f}"
        )
    for mode, costs in result["requests"].items():
        print(f"  requests, {mode}: {json.dumps(costs, sort_keys=True)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--small-kib", type=int, default=1024)
    p.add_argument(
        "--rtt-ms",
        default="0",
        metavar="MS[,MS...]",
        help="simulated round trip of the local server (as benchmarks.run); a list runs each",
    )
    p.add_argument("--https", action="store_true", help="over https (as benchmarks.run)")
    p.add_argument("--no-requests", action="store_true", help="skip the request counts")
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy every timed step into DIR")
    p.add_argument("--json", type=Path, help="write the results here too")
    add_workdir_base(p)
    args = p.parse_args(argv)
    block = os.urandom(MIB)

    def per_network(root: Path, net: Network, profiler: Profiler | None) -> dict[str, Any]:
        return run_network(root, net, args, block, profiler)

    def show(_net: Network, result: dict[str, Any]) -> None:
        report(result, args.size_mib, args.runs)

    header = {"size_mib": args.size_mib, "load": os.getloadavg()}
    return run_all(args, "cosencfs-integrity-cost-", per_network, show, header)


if __name__ == "__main__":
    raise SystemExit(main())
