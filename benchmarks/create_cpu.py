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
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.integrity_cost import cpu_seconds
from benchmarks.matrix import parse_networks
from benchmarks.peers import BaselinePeer, CosencfsPeer
from benchmarks.profiling import Profiler
from benchmarks.server import LocalServer, Network
from benchmarks.system import BenchError

WAIT = 600.0
_TICK = os.sysconf("SC_CLK_TCK")


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


def _stats(peer: CosencfsPeer) -> dict[str, Any]:
    data = peer.client_stats()
    if data is None:
        raise BenchError(f"{peer.name}: no stats from the mount")
    return data


def _fuse(data: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = data.get("fuse", {}).get("requests", {})
    return out


def _diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    keys = set(before) | set(after)
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys)}


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
        before = _stats(peer)
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
        after = _stats(peer)
    finally:
        peer.unmount()
    fuse = _diff(_fuse(before), _fuse(after))
    cos = _diff(before["store"]["requests"], after["store"]["requests"])
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
        "load": os.getloadavg()[0],
    }


def run_network(
    root: Path, network: Network, args: argparse.Namespace, profiler: Profiler | None
) -> dict[str, Any]:
    revs: list[str | None] = [None] if args.baseline is None else [None, args.baseline]
    runs: dict[str, list[dict[str, Any]]] = {}
    with LocalServer(root / "srv", root / "server.log", network) as server:
        peers = [make_peer(root, server, rev) for rev in revs]
        try:
            for r in range(args.runs):
                order = peers if r % 2 == 0 else peers[::-1]
                for peer in order:
                    prof = profiler if peer.name == "cosencfs" else None
                    res = one_run(peer, args.files, args.size, f"{peer.name}-{r}", prof)
                    runs.setdefault(peer.name, []).append(res)
                    print(f"  {network.label} {peer.name} run {r}: {_line(res)}", flush=True)
        finally:
            for peer in peers:
                peer.kill()
    medians = {
        name: {
            k: statistics.median(x[k] for x in rs)
            for k in (
                "daemon_ms_per_file",
                "loop_ms_per_file",
                "server_ms_per_file",
                "seconds",
                "files_per_s",
            )
        }
        for name, rs in runs.items()
    }
    return {"network": network.label, "runs": runs, "median": medians}


def _line(res: dict[str, Any]) -> str:
    fuse = res["fuse_per_file"]
    return (
        f"daemon {res['daemon_ms_per_file']:.3f} ms/file (loop thread "
        f"{res['loop_ms_per_file']:.3f}), server "
        f"{res['server_ms_per_file']:.3f} ms/file, {res['files_per_s']:.0f} files/s, "
        f"FUSE {'?' if fuse is None else f'{fuse:.2f}'}/file {json.dumps(res['fuse'])}, "
        f"COS {res['cos_per_file']:.3f}/file {json.dumps(res['cos'])}, load {res['load']:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--size", type=int, default=2048, help="bytes per file")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rtt-ms", default="0", metavar="MS[,MS...]")
    p.add_argument("--https", action="store_true")
    p.add_argument("--baseline", metavar="REV", help="measure this git revision too")
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy each run into DIR")
    p.add_argument("--json", type=Path, help="write the results here too")
    p.add_argument(
        "--workdir-base",
        type=Path,
        default=Path("/var/tmp"),
        help="where the cache, the server's root and the mount go (as benchmarks.run)",
    )
    args = p.parse_args(argv)
    networks = parse_networks(args.rtt_ms, https=args.https, both=False)
    profiler = None if args.profile is None else Profiler(args.profile, set())
    root = Path(tempfile.mkdtemp(prefix="cosencfs-create-cpu-", dir=args.workdir_base))
    results = []
    try:
        for net in networks:
            result = run_network(root, net, args, profiler)
            for name, med in result["median"].items():
                print(
                    f"{net.label} {name} median of {args.runs}: daemon "
                    f"{med['daemon_ms_per_file']:.3f} ms/file (loop thread "
                    f"{med['loop_ms_per_file']:.3f}), server "
                    f"{med['server_ms_per_file']:.3f} ms/file, {med['files_per_s']:.0f} files/s"
                )
            results.append(result)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if profiler is not None and profiler.errors:
        print("profile errors: " + "; ".join(profiler.errors), file=sys.stderr)
    if args.json is not None:
        data = {"files": args.files, "size": args.size, "runs": args.runs}
        args.json.write_text(json.dumps({**data, "networks": results}, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
