"""The benchmark suite: ``python -m benchmarks.run [--quick] [--only NAMES] [--peers ...]
[--rtt-ms 0,10] [--https | --http-and-https] [--repeat K] [--scale 1000,10000]``.

Runs the workloads (a)-(i) on cosencfs and its peers (a pyfuse3
pass-through, rclone mount with crypt, s3fs), each over its own local COS
server started here on a fresh root, prints a table and the targets, and
writes a JSON result file (``benchmarks/results/`` by default, gitignored).
Needs root (``drop_caches``, FUSE) and /dev/fuse. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.cachebound import cache_bound, rand_read_big
from benchmarks.config import ALL_PEERS, REQUIRES, WORKLOADS, BenchConfig, Sizes
from benchmarks.datasets import TreeSpec, write_random_file, write_tree
from benchmarks.machine import machine_info
from benchmarks.matrix import median_rows, parse_networks
from benchmarks.peers import PEERS, BaselinePeer, Peer
from benchmarks.profiling import Profiler
from benchmarks.report import render
from benchmarks.results import PeerStatus, Row
from benchmarks.scale import run_scale
from benchmarks.system import BenchError, can_drop_caches
from benchmarks.targets import evaluate
from benchmarks.workloads import WORKLOAD_FUNCS, Ctx, Sources, failure_row

# (j) and (k) live in their own module (it imports workloads, so it registers here).
WORKLOAD_FUNCS.update(rand_read_big=rand_read_big, cache_bound=cache_bound)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: Workloads profiled with --profile unless --profile-workloads says otherwise.
PROFILED = ("seq_write", "seq_read")


def _names(text: str, known: dict[str, str] | tuple[str, ...], what: str) -> list[str]:
    letters = {v: k for k, v in known.items()} if isinstance(known, dict) else {}
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name = letters.get(item, item)
        if name not in known:
            raise SystemExit(f"unknown {what} {item!r}; known: {', '.join(known)}")
        out.append(name)
    return out


def parse_args(argv: list[str] | None) -> BenchConfig:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (CI); only cosencfs unless --peers says otherwise")  # fmt: skip
    p.add_argument("--only", metavar="NAMES", default="",
                   help="comma-separated workloads (names or letters a-i): "
                   + ", ".join(WORKLOADS))  # fmt: skip
    p.add_argument("--peers", default="",
                   help=f"comma-separated filesystems: {','.join(ALL_PEERS)} (default all; "
                   "--quick: cosencfs)")  # fmt: skip
    p.add_argument("--out", type=Path, help="result file (JSON)")
    p.add_argument("--workdir-base", type=Path, default=Path("/var/tmp"),
                   help="where the run's temporary directory goes (a disk, not tmpfs)")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--profile", action="store_true",
                   help="py-spy the cosencfs daemon during seq_write and seq_read")  # fmt: skip
    p.add_argument("--profile-workloads", default=",".join(PROFILED), metavar="NAMES")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--repeat", type=int, default=1, metavar="K",
                   help="run every peer K times, interleaved; each row is the median")  # fmt: skip
    p.add_argument("--rtt-ms", default="0", metavar="MS[,MS...]",
                   help="simulated round trip of the local server (every connect, TLS "
                   "handshake round trip and request); a list runs each")  # fmt: skip
    p.add_argument("--https", action="store_true", help="every peer over https")
    p.add_argument("--scale", default="", metavar="N[,N...]",
                   help="also the scale workload: one directory of N files (create, cold and "
                   "warm ls -l, rm -r, peak RSS); peers up to 10000, cosencfs at every N"
                   )  # fmt: skip
    p.add_argument("--scale-only", action="store_true",
                   help="only the scale workload (no workloads a-i)")  # fmt: skip
    p.add_argument("--http-and-https", action="store_true",
                   help="every network both over http and https")  # fmt: skip
    p.add_argument("--baseline", metavar="REV",
                   help="also run cosencfs as of git revision REV (cosencfs-base)")  # fmt: skip
    p.add_argument("--quiet-wait", type=float, default=None, metavar="SECONDS",
                   help="before each measurement wait up to this long for the CPUs to be "
                   "idle (shared machines); default 120, --quick: 0")  # fmt: skip
    a = p.parse_args(argv)
    workloads = _names(a.only, WORKLOADS, "workload") or list(WORKLOADS)
    default = ["cosencfs"] if a.quick else [p for p in ALL_PEERS if p != "cosencfs-base"]
    peers = _names(a.peers, ALL_PEERS, "peer") or default
    if a.baseline and "cosencfs-base" not in peers:
        peers.insert(peers.index("cosencfs") + 1 if "cosencfs" in peers else 0, "cosencfs-base")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = a.out or RESULTS_DIR / f"bench{'-quick' if a.quick else ''}-{stamp}.json"
    a.workdir_base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="cosencfs-bench-", dir=a.workdir_base))
    cfg = BenchConfig(
        sizes=Sizes.quick() if a.quick else Sizes.full(),
        quick=a.quick,
        workloads=workloads,
        peers=peers,
        out=out,
        workdir=workdir,
        results_dir=RESULTS_DIR,
        profile=a.profile,
        profile_workloads=_names(a.profile_workloads, WORKLOADS, "workload"),
        keep=a.keep,
        seed=a.seed,
        quiet_wait=a.quiet_wait if a.quiet_wait is not None else (0.0 if a.quick else 120.0),
        repeat=max(1, a.repeat),
        baseline=a.baseline,
        networks=parse_networks(a.rtt_ms, https=a.https, both=a.http_and_https),
        scale=[int(s.replace("_", "")) for s in a.scale.split(",") if s.strip()],
    )
    if a.scale_only:
        if not cfg.scale:
            raise SystemExit("--scale-only needs --scale N[,N...]")
        cfg.workloads = []
    return cfg


def plan(selected: list[str]) -> list[tuple[str, bool]]:
    """Workloads in run order, each with whether it is measured (else set-up)."""
    needed = set(selected)
    for w in selected:
        needed.update(REQUIRES.get(w, ()))
    return [(w, w in selected) for w in WORKLOADS if w in needed]


def prepare_sources(cfg: BenchConfig, steps: list[str]) -> Sources:
    src = cfg.workdir / "src"
    src.mkdir(parents=True, exist_ok=True)
    s = cfg.sizes
    big, huge, tree, rw = src / "big", src / "huge", src / "tree", src / "rw"
    tree_bytes = 0
    log(f"generating input data in {src}")
    if {"seq_write", "seq_read", "rand_read", "rand_read_big", "cache_bound"} & set(steps):
        write_random_file(big, s.big_file, f"big-{cfg.seed}")
    if "big_write_rss" in steps:
        write_random_file(huge, s.huge_file, f"huge-{cfg.seed}")
    if "rand_write" in steps:
        write_random_file(rw, s.rand_write_file, f"rw-{cfg.seed}")
    if "rsync" in steps:
        tree_bytes = write_tree(tree, TreeSpec(files=s.tree_files, dirs=s.tree_dirs),
                                seed=f"tree-{cfg.seed}")  # fmt: skip
    return Sources(big=big, huge=huge, tree=tree, tree_files=s.tree_files, tree_bytes=tree_bytes,
                   rw=rw)  # fmt: skip


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_peer(ctx: Ctx, peer: Peer, steps: list[tuple[str, bool]], rows: list[Row]) -> PeerStatus:
    status = PeerStatus(name=peer.name, status="ok")
    missing = peer.missing()
    if missing:
        status.status, status.error = "skipped", missing
        log(f"{peer.name}: skipped: {missing}")
        return status
    status.version = peer.version()
    try:
        try:
            peer.setup()
            peer.mount()
        except (BenchError, OSError) as exc:
            status.status, status.error = "skipped", f"could not mount: {exc}"
            log(f"{peer.name}: skipped: {status.error}")
            return status
        for name, measured in steps:
            log(f"{peer.name}: {name}{'' if measured else ' (set-up, not measured)'}")
            got: list[Row] = []
            with failure_row(got, peer.name, name):
                got = WORKLOAD_FUNCS[name](ctx, peer)
            for r in got:
                if r.error:
                    log(f"{peer.name}: {r.key}: ERROR {r.error}")
                elif r.seconds is not None:
                    log(f"{peer.name}: {r.key}: {r.seconds:.3f} s, {r.total_requests} requests")
            if measured:
                rows.extend(got)
        peer.unmount()
    except Exception as exc:
        status.status, status.error = "failed", f"{type(exc).__name__}: {exc}"
        log(f"{peer.name}: failed: {traceback.format_exc()}")
    finally:
        if peer.server is not None and peer.server.proc is not None:
            try:
                status.connections = dict(peer.server.stats().network.get("lifetime", {}))
            except (BenchError, OSError) as exc:
                log(f"{peer.name}: no connection counts: {exc}")
        peer.teardown()
        bad = [c for c in peer.exit_codes if c not in (0, None)]
        status.exit_status = bad[0] if bad else (peer.exit_codes[-1] if peer.exit_codes else None)
        if not ctx.cfg.keep:
            shutil.rmtree(peer.work, ignore_errors=True)
    return status


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    steps = plan(cfg.workloads)
    rows: list[Row] = []
    scale_rows: list[Row] = []
    statuses: list[PeerStatus] = []
    notes: list[str] = []
    if os.geteuid() != 0:
        notes.append("not root: page cache not dropped, mounts may fail")
    if not can_drop_caches():
        notes.append("cannot write /proc/sys/vm/drop_caches: cold runs are not fully cold")
    if cfg.quick:
        notes.append("quick mode: tiny sizes, the ratios say little")
    started = time.time()
    info = machine_info(cfg.workdir)
    profiler = None
    if cfg.profile:
        pdir = cfg.results_dir / f"profiles-{time.strftime('%Y%m%d-%H%M%S')}"
        profiler = Profiler(pdir, set(cfg.profile_workloads))
    try:
        sources = prepare_sources(cfg, [w for w, _ in steps])
        ctx = Ctx(cfg=cfg, src=sources, profiler=profiler)
        # Interleaved: run i of every network and peer before run i + 1 of any.
        for i in range(cfg.repeat if steps else 0):
            for net in cfg.networks:
                for name in cfg.peers:
                    slug = f"run{i}-{net.rtt_ms:g}ms-{'https' if net.https else 'http'}"
                    peer = PEERS[name](cfg.workdir / slug, net)
                    if isinstance(peer, BaselinePeer) and cfg.baseline:
                        peer.rev = cfg.baseline
                    run_rows: list[Row] = []
                    status = run_peer(ctx, peer, steps, run_rows)
                    status.network, status.run = net.label, i
                    statuses.append(status)
                    for r in run_rows:
                        r.extra["run"] = i
                        r.network = net.label
                    rows.extend(run_rows)
        rows = median_rows(rows)
        if cfg.scale:
            scale_rows = run_scale(ctx, cfg.networks, cfg.peers, cfg.scale, log)
    finally:
        if not cfg.keep:
            shutil.rmtree(cfg.workdir, ignore_errors=True)
    targets = []
    for net in cfg.networks:
        for tgt in evaluate([r for r in rows if r.network == net.label],
                            small_files=cfg.sizes.small_files):  # fmt: skip
            tgt.network = net.label
            targets.append(tgt)
    data: dict[str, Any] = {
        "format": 1,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "config": cfg.as_dict(),
        "machine": info,
        "peers": [vars_of(s) for s in statuses if s.run == 0],
        "peer_runs": [vars_of(s) for s in statuses],
        "rows": [r.as_dict() for r in rows],
        "targets": [vars_of(t) for t in targets],
        "scale": [r.as_dict() for r in scale_rows],
        "notes": notes,
    }
    if profiler is not None:
        data["profiles"] = {"files": profiler.files, "errors": profiler.errors}
        notes += [f"profile error: {e}" for e in profiler.errors]
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    print(render(data))
    print(f"\nresults: {cfg.out}")
    return 0


def vars_of(obj: object) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
