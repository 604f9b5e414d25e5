"""Runs over several networks and repeats: the network list, medians with their spread, the matrix.

``--rtt-ms 0,10 --http-and-https --repeat 3`` runs every peer over every
network three times, interleaved (run 1 of every network and peer, then
run 2, ...), so a slow minute of the shared machine hits all of them alike.
Each row is then the run with the median value, and keeps every run's
value (``extra["runs"]``) and the spread, (max - min) / median.
"""

from __future__ import annotations

from benchmarks.config import WORKLOADS
from benchmarks.results import MIB, Row
from benchmarks.server import Network


def parse_networks(rtt_text: str, *, https: bool, both: bool) -> list[Network]:
    """Every (RTT, scheme) pair asked for, RTTs in the order given, http first."""
    rtts = []
    for item in (s.strip() for s in rtt_text.split(",")):
        if not item:
            continue
        value = float(item)
        if value < 0:
            raise SystemExit(f"--rtt-ms: {item} is negative")
        rtts.append(value)
    schemes = [False, True] if both else [https]
    return [Network(rtt, s) for rtt in (rtts or [0.0]) for s in schemes]


def value(r: Row) -> float:
    """What a row is compared by: its rate, else its seconds."""
    return r.rate if r.rate is not None else (r.seconds or 0.0)


def median_rows(rows: list[Row]) -> list[Row]:
    """One row per (network, peer, workload variant): the run with the median result."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.network, r.peer, r.key), []).append(r)
    out = []
    for group in groups.values():
        ok = [r for r in group if r.error is None]
        if not ok:
            out.append(group[0])
            continue
        ok.sort(key=value)
        best = ok[len(ok) // 2]
        values = [value(r) for r in ok]
        best.extra["runs"] = [round(v, 4) for v in values]
        best.extra["failed_runs"] = len(group) - len(ok)
        mid = value(best)
        best.extra["spread"] = round((max(values) - min(values)) / mid, 4) if mid else None
        out.append(best)
    return out


#: Rows shown as a rate (throughput, operations per second); the others as seconds.
RATE_ROWS = frozenset(
    {"seq_write", "seq_read", "rand_read", "rand_read_big", "rand_write", "cache_bound"}
)


def _cell(r: Row | None) -> str:
    if r is None:
        return ""
    if r.error is not None:
        return "error"
    if r.rate is not None and r.workload in RATE_ROWS:
        text = f"{r.rate:,.0f} {r.unit}"
    else:
        text = f"{r.seconds or 0.0:.2f} s"
    spread = r.extra.get("spread")
    if spread is not None and len(r.extra.get("runs", [])) > 1:
        text += f" [{spread:.0%}]"
    extra = []
    if r.workload in ("rand_read", "rand_read_big") and r.bytes_down is not None:
        extra.append(f"{r.bytes_down / MIB:.1f} MiB down")
    if "cache_peak" in r.extra:
        extra.append(f"cache peak {r.extra['cache_peak'] / MIB:.0f} MiB")
    if "peak_rss" in r.extra:
        extra.append(f"RSS {r.extra['peak_rss'] / MIB:.0f} MiB")
    return text + (f" ({', '.join(extra)})" if extra else "")


def matrix(
    rows: list[Row], peers: list[str], networks: list[str]
) -> tuple[list[str], list[list[str]]]:
    """Headers and body: one line per workload variant, a column per (network, peer)."""
    order = {w: i for i, w in enumerate(WORKLOADS)}
    index = {(r.network, r.peer, r.key): r for r in rows}
    keys = sorted({r.key for r in rows}, key=lambda k: (order.get(_base(k), 99), k))
    cols = [(n, p) for n in networks for p in peers if any(r.peer == p for r in rows)]
    headers = ["workload", *(f"{p} {n}" for n, p in cols)]
    body = [[k, *(_cell(index.get((n, p, k))) for n, p in cols)] for k in keys]
    return headers, body


def _base(key: str) -> str:
    name = key.split(":", maxsplit=1)[0]
    return name.split("_cold")[0].split("_warm")[0]
