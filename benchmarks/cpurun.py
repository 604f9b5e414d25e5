"""What the CPU-per-operation benchmarks share: options, interleaved runs, medians, output.

``benchmarks.create_cpu`` (per small file created) and ``benchmarks.write_cpu``
(per small in-place write) each mount cosencfs on one local server per
network and run their step in alternation with a ``--baseline`` revision
(this tree, base, base, this tree, ...), so that drift on a shared machine
hits both alike. ``benchmarks.integrity_cost`` shares the per-network loop
and its output (``run_all``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.matrix import parse_networks
from benchmarks.peers import BaselinePeer, CosencfsPeer
from benchmarks.profiling import Profiler
from benchmarks.server import LocalServer, Network
from benchmarks.system import BenchError

_TICK = os.sysconf("SC_CLK_TCK")

#: One run of the step on a mounted-able peer: (peer, run number, tag, profiler) -> result.
RunOne = Callable[[CosencfsPeer, int, str, Profiler | None], dict[str, Any]]


def loop_cpu(pid: int) -> float:
    """User + system CPU of the daemon's main thread (its event loop: FUSE requests)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def make_peer(root: Path, server: LocalServer, rev: str | None) -> CosencfsPeer:
    peer: CosencfsPeer
    if rev is None:
        peer = CosencfsPeer(root / "cosencfs", server.network)
    else:
        BaselinePeer.rev = rev
        peer = BaselinePeer(root / "cosencfs-base", server.network)
    peer.server = server
    for d in (peer.mnt, peer.cache, peer.logs):
        d.mkdir(parents=True, exist_ok=True)
    peer.prepare()
    return peer


def mount_stats(peer: CosencfsPeer) -> dict[str, Any]:
    data = peer.client_stats()
    if data is None:
        raise BenchError(f"{peer.name}: no stats from the mount")
    return data


def fuse_requests(data: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = data.get("fuse", {}).get("requests", {})
    return out


def counts_diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    keys = set(before) | set(after)
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys)}


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rtt-ms", default="0", metavar="MS[,MS...]")
    p.add_argument("--https", action="store_true")
    p.add_argument("--baseline", metavar="REV", help="measure this git revision too")
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy each run into DIR")
    p.add_argument("--json", type=Path, help="write the results here too")
    add_workdir_base(p)


def add_workdir_base(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workdir-base",
        type=Path,
        default=Path("/var/tmp"),
        help="where the caches, the server's root and the mounts go (as benchmarks.run)",
    )


def run_network(
    root: Path,
    network: Network,
    args: argparse.Namespace,
    profiler: Profiler | None,
    one: RunOne,
    line: Callable[[dict[str, Any]], str],
    keys: Sequence[str],
) -> dict[str, Any]:
    """Every run of this tree and of ``--baseline``, interleaved; medians and pair ratios."""
    revs: list[str | None] = [None] if args.baseline is None else [None, args.baseline]
    runs: dict[str, list[dict[str, Any]]] = {}
    with LocalServer(root / "srv", root / "server.log", network) as server:
        peers = [make_peer(root, server, rev) for rev in revs]
        try:
            for r in range(args.runs):
                order = peers if r % 2 == 0 else peers[::-1]
                for peer in order:
                    prof = profiler if peer.name == "cosencfs" else None
                    res = one(peer, r, f"{peer.name}-{r}", prof)
                    runs.setdefault(peer.name, []).append(res)
                    print(f"  {network.label} {peer.name} run {r}: {line(res)}", flush=True)
        finally:
            for peer in peers:
                peer.kill()
    medians = {
        name: {k: statistics.median(x[k] for x in rs) for k in keys} for name, rs in runs.items()
    }
    out: dict[str, Any] = {"network": network.label, "runs": runs, "median": medians}
    if len(runs) == 2:
        mine, base = runs["cosencfs"], runs["cosencfs-base"]
        out["ratio"] = {
            k: statistics.median(a[k] / b[k] for a, b in zip(mine, base, strict=True) if b[k])
            for k in keys
        }
    return out


def run_all(
    args: argparse.Namespace,
    prefix: str,
    per_network: Callable[[Path, Network, Profiler | None], dict[str, Any]],
    report: Callable[[Network, dict[str, Any]], None],
    header: dict[str, Any],
) -> int:
    """Each network of ``--rtt-ms``/``--https`` in turn, in a scratch directory; ``--json``."""
    networks = parse_networks(args.rtt_ms, https=args.https, both=False)
    profiler = None if args.profile is None else Profiler(args.profile, set())
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=args.workdir_base))
    results = []
    try:
        for net in networks:
            result = per_network(root, net, profiler)
            report(net, result)
            results.append(result)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if profiler is not None and profiler.errors:
        print("profile errors: " + "; ".join(profiler.errors), file=sys.stderr)
    if args.json is not None:
        data = {**header, "runs": args.runs, "networks": results}
        args.json.write_text(json.dumps(data, indent=2, sort_keys=True))
    return 0


def run_medians(
    args: argparse.Namespace,
    prefix: str,
    one: RunOne,
    line: Callable[[dict[str, Any]], str],
    keys: Sequence[str],
    header: dict[str, Any],
    median_text: Callable[[dict[str, Any]], str],
    ratio_text: Callable[[dict[str, Any]], str] | None = None,
) -> int:
    """:func:`run_all` of :func:`run_network`: each network's medians printed by
    ``median_text`` and, with ``--baseline``, the pair ratios by ``ratio_text``."""

    def per_network(root: Path, net: Network, profiler: Profiler | None) -> dict[str, Any]:
        return run_network(root, net, args, profiler, one, line, keys)

    def report(net: Network, result: dict[str, Any]) -> None:
        for name, med in result["median"].items():
            print(f"{net.label} {name} median of {args.runs}{median_text(med)}")
        if ratio_text is not None and "ratio" in result:
            print(f"{net.label} this tree / base, median of pairs: {ratio_text(result['ratio'])}")

    return run_all(args, prefix, per_network, report, header)
