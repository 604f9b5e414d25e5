"""``--scale N,N,...``: how the cost of one directory grows with its number of files.

For each size N and each filesystem, on a fresh mount and bucket: create N
files of 2 KiB until all are in the bucket, a cold ``ls -l`` (remount with
an emptied cache), the same ``ls -l`` warm, ``rm -r`` until the bucket is
empty, and the daemon's peak RSS over all of it (VmHWM of each daemon
before it is unmounted).  Peers other than cosencfs stop at
``PEER_MAX_FILES`` (s3fs at 10 ms would need hours for 100,000).
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from benchmarks.config import MIB
from benchmarks.datasets import random_bytes
from benchmarks.peers import PEERS, BaselinePeer, Peer
from benchmarks.results import Row
from benchmarks.server import BucketState, Network
from benchmarks.system import BenchError, bounded, proc_status, run
from benchmarks.workloads import QUIESCE, Ctx, _ls, cold_remount, measure

#: The largest directory a peer other than cosencfs is run on.
PEER_MAX_FILES = 10_000
FILE_SIZE = 2048
#: Upper bound of one step, per 1000 files (s3fs at 10 ms: ~100 s per 1000 files).
SECONDS_PER_1000 = 300.0

SCALE_HEADERS = ["network", "files", "peer", "create s", "files/s", "create reqs",
                 "cold ls -l s", "cold ls reqs", "warm ls -l s", "rm -r s",
                 "peak RSS MiB"]  # fmt: skip


def _peak(peer: Peer, peak: int) -> int:
    if peer.proc is not None and peer.proc.poll() is None:
        return max(peak, proc_status(peer.proc.pid).get("VmHWM", 0))
    return peak


def scale_one(ctx: Ctx, peer: Peer, n: int) -> list[Row]:
    """The scale steps for ``n`` files on a set-up, mounted ``peer``."""
    timeout = max(600.0, SECONDS_PER_1000 * n / 1000)
    d = peer.mnt / "scale"
    bounded(d.mkdir, timeout=60, what=f"mkdir {d}")
    time.sleep(QUIESCE)
    data = random_bytes(f"scale-{ctx.cfg.seed}", FILE_SIZE * 64)
    assert peer.server is not None
    base = peer.server.bucket()

    def create() -> None:
        for i in range(n):
            with open(d / f"f{i:06d}", "wb") as f:
                k = i % 64
                f.write(data[k * FILE_SIZE : (k + 1) * FILE_SIZE])

    variant = str(n)
    rows = []
    c = measure(ctx, peer, "scale_create", create, variant=variant, timeout=timeout,
                label=f"create {n} files of 2 KiB, until in the bucket",
                committed=lambda s: s.files >= base.files + n, what=f"{n} new objects",
                sync=True)  # fmt: skip
    c.row.rate, c.row.unit = n / c.seconds, "files/s"
    rows.append(c.row)
    peak = created = _peak(peer, 0)
    peer.unmount()
    cold_remount(peer, clear_cache=True)
    for kind in ("cold", "warm"):
        m = measure(ctx, peer, f"scale_ls_{kind}", _ls(d, n, timeout), variant=variant,
                    timeout=timeout, label=f"{kind} ls -l of {n} files")  # fmt: skip
        m.row.rate, m.row.unit = n / m.seconds, "entries/s"
        rows.append(m.row)
    gone = BucketState(base.files, 0, 0)
    r = measure(ctx, peer, "scale_rm", lambda: run(["rm", "-r", str(d)], timeout=timeout),
                variant=variant, timeout=timeout, label=f"rm -r of {n} files, until gone",
                committed=lambda s: s.files <= gone.files, what=f"{n} objects deleted")  # fmt: skip
    r.row.rate, r.row.unit = n / r.seconds, "files/s"
    rows.append(r.row)
    listed = _peak(peer, 0)
    peak = max(peak, listed)
    for row in rows:
        row.extra["peak_rss_all"] = peak
        # Each daemon's own (kB): the one that created the files, the remounted one.
        row.extra["peak_rss_create"], row.extra["peak_rss_list"] = created, listed
    return rows


def run_scale(ctx: Ctx, networks: list[Network], peers: list[str], sizes: list[int],
              log: Any) -> list[Row]:  # fmt: skip
    out: list[Row] = []
    for net in networks:
        for n in sizes:
            for name in peers:
                if name == "passthrough":
                    continue
                if name not in ("cosencfs", "cosencfs-base") and n > PEER_MAX_FILES:
                    log(f"scale {n}: {name} skipped (peers stop at {PEER_MAX_FILES})")
                    continue
                slug = f"scale-{n}-{net.rtt_ms:g}ms-{'https' if net.https else 'http'}"
                peer = PEERS[name](ctx.cfg.workdir / slug, net)
                if isinstance(peer, BaselinePeer) and ctx.cfg.baseline:
                    peer.rev = ctx.cfg.baseline  # (else HEAD: this tree again, not the baseline)
                missing = peer.missing()
                if missing:
                    log(f"scale {n}: {name} skipped: {missing}")
                    continue
                log(f"scale {n} ({net.label}): {name}")
                try:
                    peer.setup()
                    peer.mount()
                    rows = scale_one(ctx, peer, n)
                    peer.unmount()
                except (BenchError, OSError) as exc:
                    log(f"scale {n}: {name}: ERROR {exc}")
                    rows = [Row(peer=name, workload="scale_create", variant=str(n),
                                error=f"{type(exc).__name__}: {exc}")]  # fmt: skip
                finally:
                    peer.teardown()
                    if not ctx.cfg.keep:
                        shutil.rmtree(peer.work, ignore_errors=True)
                for row in rows:
                    row.network = net.label
                    log(f"scale {n}: {name}: {row.key} {row.seconds or 0:.2f} s"
                        + (f" ERROR {row.error}" if row.error else ""))  # fmt: skip
                out += rows
    return out


def scale_table(data: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]] | None:
    """The scale rows of a result file as one table (None: no scale run)."""
    if not data:
        return None
    rows = [Row.from_dict(d) for d in data]
    index = {(r.network, r.variant, r.peer, r.workload): r for r in rows}
    seen = list(dict.fromkeys((r.network, r.variant, r.peer) for r in rows))
    body = []
    for net, n, peer in seen:

        def get(w: str) -> Row | None:
            return index.get((net, n, peer, w))  # noqa: B023 - used right away

        create = get("scale_create")
        if create is not None and create.error:
            body.append([net, n, peer, f"ERROR {create.error}"] + [""] * 7)
            continue
        cold, warm, rm = get("scale_ls_cold"), get("scale_ls_warm"), get("scale_rm")

        def sec(r: Row | None) -> str:
            return "" if r is None or r.seconds is None else f"{r.seconds:.2f}"

        def reqs(r: Row | None) -> str:
            return "" if r is None or r.total_requests is None else str(r.total_requests)

        peak = create.extra.get("peak_rss_all") if create is not None else None
        body.append([
            net, f"{int(n):,}", peer, sec(create),
            f"{create.rate:,.0f}" if create is not None and create.rate else "",
            reqs(create), sec(cold), reqs(cold), sec(warm), sec(rm),
            f"{peak / MIB:.0f}" if peak else "",
        ])  # fmt: skip
    return SCALE_HEADERS, body


#: Issue 18's targets: (label, files, round trip ms, workload, limit, unit).
#: "s" rows are met at or below the limit, "files/s" at or above, "MiB" below.
SCALE_TARGETS = [
    ("cold ls -l of 10,000 files at 10 ms <= 1 s", 10_000, 10.0, "scale_ls_cold", 1.0, "s"),
    ("warm ls -l of 10,000 files at 10 ms <= 0.3 s", 10_000, 10.0, "scale_ls_warm", 0.3, "s"),
    ("cold ls -l of 100,000 files at 10 ms <= 10 s", 100_000, 10.0, "scale_ls_cold", 10.0, "s"),
    ("daemon peak RSS with 100,000 files < 200 MiB", 100_000, None, "scale_create", 200.0, "MiB"),
    ("creation until in the bucket at 0 ms >= 1000 files/s", None, 0.0, "scale_create", 1000.0,
     "files/s"),
]  # fmt: skip


def _rtt(network: str) -> float | None:
    try:
        return float(network.split(" ms", 1)[0])
    except ValueError:
        return None


def scale_targets(data: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]] | None:
    """Issue 18's targets against the cosencfs scale rows of a result file."""
    rows = [Row.from_dict(d) for d in data]
    rows = [r for r in rows if r.peer == "cosencfs" and not r.error]
    if not rows:
        return None
    body = []
    for label, files, rtt, workload, limit, unit in SCALE_TARGETS:
        got = [
            r
            for r in rows
            if r.workload == workload
            and (files is None or r.variant == str(files))
            and (rtt is None or _rtt(r.network) == rtt)
        ]
        if not got:
            body.append([label, "not run", "n/a"])
            continue
        for r in got:
            if unit == "MiB":
                peak = r.extra.get("peak_rss_all")
                value = None if peak is None else peak / MIB
                ok = value is not None and value < limit
            elif unit == "files/s":
                value, ok = r.rate, r.rate is not None and r.rate >= limit
            else:
                value, ok = r.seconds, r.seconds is not None and r.seconds <= limit
            shown = "n/a" if value is None else f"{value:,.2f} {unit}"
            body.append([label, f"{shown} ({r.network}, {int(r.variant):,} files)",
                         "met" if ok else "NOT met"])  # fmt: skip
    return ["target (issue 18)", "measured", "verdict"], body
