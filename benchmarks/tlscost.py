"""What https costs each filesystem: every row over https against the same row over http.

Issue 16 asks every cosencfs row over https to be within 10 % of the same
row over http, in the same run, at each round-trip time.  The ratio is the
https run's time over the http run's (a rate's inverse), so 1.10 is "10 %
slower over https"; the peers' ratios are shown beside it because the local
server does its own TLS on the same CPUs and that share of the cost is in
every column alike.
"""

from __future__ import annotations

from benchmarks.matrix import RATE_ROWS, _base
from benchmarks.results import Row
from benchmarks.server import Network

#: The bound of issue 16: https at most this much slower than http.
WITHIN = 1.10


def slowdown(http: Row | None, https: Row | None) -> float | None:
    """https time / http time for one row (rates inverted); None when either is missing."""
    if http is None or https is None or http.error is not None or https.error is not None:
        return None
    if http.workload in RATE_ROWS and http.rate and https.rate:
        return http.rate / https.rate
    if http.seconds and https.seconds:
        return https.seconds / http.seconds
    return None


def tls_table(
    rows: list[Row], peers: list[str], networks: list[Network]
) -> tuple[list[str], list[list[str]]] | None:
    """Headers and body, one line per (round trip, workload variant); None without both schemes."""
    rtts = [n.rtt_ms for n in networks if not n.https and Network(n.rtt_ms, True) in networks]
    if not rtts:
        return None
    index = {(r.network, r.peer, r.key): r for r in rows}
    keys = sorted({r.key for r in rows}, key=lambda k: (_base(k), k))
    cols = [p for p in peers if any(r.peer == p for r in rows)]
    body = []
    for rtt in rtts:
        plain, tls = Network(rtt, False).label, Network(rtt, True).label
        for k in keys:
            cells = []
            for p in cols:
                x = slowdown(index.get((plain, p, k)), index.get((tls, p, k)))
                cells.append("" if x is None else f"{x:.2f}")
            mine = slowdown(index.get((plain, "cosencfs", k)), index.get((tls, "cosencfs", k)))
            verdict = "" if mine is None else ("met" if mine <= WITHIN else "**not met**")
            body.append([f"{rtt:g} ms", k, *cells, verdict])
    headers = ["rtt", "workload", *(f"{p} https/http" for p in cols), "cosencfs <= 1.10"]
    return headers, body
