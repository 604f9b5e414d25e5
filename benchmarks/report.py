"""Tables of a run: plain text for the terminal, Markdown for the docs.

Run on its own to re-render a result file:
``python -m benchmarks.report results.json [--markdown]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.config import MIB, WORKLOADS
from benchmarks.matrix import matrix
from benchmarks.results import PeerStatus, Row, TargetResult
from benchmarks.scale import scale_table, scale_targets
from benchmarks.server import Network
from benchmarks.targets import evaluate
from benchmarks.tlscost import tls_table

#: Short names of COS operations for the table (the JSON has the full ones).
OP_ABBREV = {
    "PutObject": "PUT",
    "GetObject": "GET",
    "HeadObject": "HEAD",
    "ListObjects": "LIST",
    "ListObjectsV2": "LISTv2",
    "DeleteObject": "DEL",
    "DeleteMultipleObjects": "MDEL",
    "CopyObject": "COPY",
    "InitiateMultipartUpload": "MPinit",
    "UploadPart": "PART",
    "UploadPartCopy": "PARTcopy",
    "CompleteMultipartUpload": "MPdone",
    "AbortMultipartUpload": "MPabort",
    "ListMultipartUploads": "LISTmp",
    "ListParts": "LISTparts",
    "HeadBucket": "HEADbkt",
    "GetBucketLocation": "LOCbkt",
    "GetBucketVersioning": "VERbkt",
}

RIGHT = frozenset({2, 3, 4, 6, 7})
HEADERS = ["workload", "peer", "seconds", "rate", "reqs", "requests by op", "up MiB",
           "down MiB", "notes"]  # fmt: skip


def ops_text(requests: dict[str, int] | None) -> str:
    if requests is None:
        return ""
    items = sorted(requests.items(), key=lambda kv: (-kv[1], kv[0]))
    return " ".join(f"{OP_ABBREV.get(op, op)}:{n}" for op, n in items) or "-"


def _num(x: float | None, digits: int = 2) -> str:
    if x is None:
        return ""
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}f}"


def notes(row: Row) -> str:
    if row.error:
        return f"ERROR: {row.error}"
    parts = []
    e = row.extra
    if "peak_rss" in e:
        parts.append(f"peak RSS {e['peak_rss'] / MIB:.0f} MiB")
    if "requests_per_file" in e:
        parts.append(f"{e['requests_per_file']:.3f} req/file")
    if "client_zero_requests" in e:
        parts.append(f"cosencfs stats: {e['client_total_requests']} requests")
    if "down_per_read" in e:
        parts.append(f"{e['down_per_read']:.1f}x the bytes read downloaded")
    if e.get("runs") and len(e["runs"]) > 1:
        parts.append(f"runs {'/'.join(_num(v) for v in e['runs'])}")
    if e.get("page_cache_dropped") is False:
        parts.append("page cache NOT dropped")
    act, com = e.get("action_seconds"), e.get("commit_seconds")
    if act is not None and com is not None and row.seconds and com > 0.02 * row.seconds:
        parts.append(f"{act:.2f} s + {com:.2f} s until committed")
    if e.get("cpu_busy_before", 0) > 0.25:
        parts.append(f"machine busy before: {e['cpu_busy_before']:.0%} CPU")
    if row.note:
        parts.append(row.note)
    return "; ".join(parts)


def table_rows(rows: list[Row], peers: list[str]) -> list[list[str]]:
    order = {w: i for i, w in enumerate(WORKLOADS)}
    peer_order = {p: i for i, p in enumerate(peers)}

    def sort_key(r: Row) -> tuple[int, int, str, int]:
        base = r.workload.split("_cold")[0].split("_warm")[0]
        return (order.get(base, order.get(r.workload, 99)), 0 if "cold" in r.workload else 1,
                r.variant, peer_order.get(r.peer, 99))  # fmt: skip

    out = []
    for r in sorted(rows, key=sort_key):
        name = WORKLOADS.get(r.workload.split("_cold")[0].split("_warm")[0], "?")
        out.append([
            f"({name}) {r.key}",
            r.peer,
            "" if r.seconds is None else f"{r.seconds:.3f}",
            "" if r.rate is None else f"{_num(r.rate)} {r.unit}",
            "" if r.total_requests is None else str(r.total_requests),
            ops_text(r.requests),
            "" if r.bytes_up is None else f"{r.bytes_up / MIB:.2f}",
            "" if r.bytes_down is None else f"{r.bytes_down / MIB:.2f}",
            notes(r),
        ])  # fmt: skip
    return out


def text_table(
    headers: list[str], body: list[list[str]], right: frozenset[int] = frozenset()
) -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h)
              for i, h in enumerate(headers)]  # fmt: skip
    lines = []
    for cells in [headers, ["-" * w for w in widths], *body]:
        padded = (c.rjust(w) if i in right else c.ljust(w)
                  for i, (c, w) in enumerate(zip(cells, widths, strict=True)))  # fmt: skip
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def md_table(headers: list[str], body: list[list[str]], right: frozenset[int] = frozenset()) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    rule = "|" + "".join("---:|" if i in right else "---|" for i in range(len(headers)))
    lines = ["| " + " | ".join(headers) + " |", rule]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in body]
    return "\n".join(lines)


def target_rows(targets: list[TargetResult]) -> list[list[str]]:
    return [[t.number, t.text, t.measured, t.verdict, t.detail] for t in targets]


TARGET_HEADERS = ["#", "target", "measured", "verdict", "detail"]


def peer_lines(peers: list[PeerStatus]) -> list[str]:
    out = []
    for p in peers:
        line = f"{p.name}" + (f" ({p.network})" if p.network else "") + f": {p.status}"
        if p.version:
            line += f" ({p.version})"
        if p.connections:
            c = p.connections
            line += (f", connections: {c.get('tls_connections', 0)} TLS,"
                     f" {c.get('plain_connections', 0)} plain")  # fmt: skip
        if p.exit_status not in (None, 0):
            line += f", daemon exit status {p.exit_status}"
        if p.error:
            # The JSON has the whole log tail; the table its end.
            err = " ".join(p.error.split())
            line += f": {err if len(err) <= 300 else '...' + err[-300:]}"
        out.append(line)
    return out


def render(data: dict[str, Any], *, markdown: bool = False) -> str:
    rows = [Row.from_dict(r) for r in data["rows"]]
    peers = [PeerStatus(**p) for p in data["peers"]]
    names = list(dict.fromkeys(p.name for p in peers))
    config = data.get("config", {})
    small = config.get("sizes", {}).get("small_files")
    networks = [n["label"] for n in config.get("networks", [])] or [""]
    table = md_table if markdown else text_table
    bullet = "- " if markdown else "  "
    parts = [*(("- " if markdown else "") + line for line in header(data))]
    for net in networks:
        mine = [r for r in rows if r.network == net]
        # Re-evaluated from the rows, so an old result file shows today's wording.
        targets = (
            evaluate(mine, small_files=small)
            if small
            else [TargetResult(**t) for t in data["targets"] if t.get("network", "") == net]
        )
        parts += [
            "",
            *([f"{'### ' if markdown else '== '}{net}", ""] if net else []),
            table(HEADERS, table_rows(mine, names), RIGHT),
            "",
            f"Targets (cosencfs, ratios from this run{', ' + net if net else ''}):",
            "",
            table(TARGET_HEADERS, target_rows(targets)),
        ]
    if len(networks) > 1 or config.get("repeat", 1) > 1:
        headers, body = matrix(rows, names, networks)
        parts += [
            "",
            "Medians [spread = (max - min) / median of the runs]:",
            "",
            table(headers, body),
        ]
    nets = [Network(n["rtt_ms"], n["https"]) for n in config.get("networks", [])]
    tls = tls_table(rows, names, nets)
    if tls is not None:
        parts += [
            "",
            "https against http (time over https / time over http; issue 16: cosencfs <= 1.10):",
            "",
            table(*tls),
        ]
    scale = scale_table(data.get("scale", []))
    if scale is not None:
        parts += ["", "Scale (cosencfs and peers, one directory of N files):", "", table(*scale)]
    targets18 = scale_targets(data.get("scale", []))
    if targets18 is not None:
        parts += ["", "Scale targets:", "", table(*targets18)]
    parts += ["", "Filesystems:", *(bullet + line for line in peer_lines(peers))]
    if data.get("notes"):
        parts += ["", "Notes:", *(bullet + n for n in data["notes"])]
    return "\n".join(parts)


def header(data: dict[str, Any]) -> list[str]:
    m, c = data.get("machine", {}), data.get("config", {})
    git = m.get("git", {})
    dirty = git.get("uncommitted") or []
    sizes = c.get("sizes", {})
    v = m.get("versions", {})
    return [
        f"Run {data.get('started', '?')} ({data.get('duration_s', '?')} s), cosencfs at "
        f"{git.get('commit', '?')}" + (f" + uncommitted {', '.join(dirty)}" if dirty else ""),
        f"Machine: {m.get('nproc', '?')} CPUs ({m.get('cpu', '?')}), "
        f"{m.get('memory_bytes', 0) / 1024**3:.1f} GiB, Linux {m.get('kernel', '?')}, "
        f"Python {m.get('python', '?')}, work dir on {m.get('workdir_fs', '?')}; "
        f"pyfuse3 {v.get('pyfuse3', '?')}, trio {v.get('trio', '?')}",
        f"Sizes: {sizes.get('big_file', 0) // MIB} MiB file, "
        f"{sizes.get('small_files', '?')} small files, {sizes.get('random_reads', '?')} random "
        f"reads, {sizes.get('tree_files', '?')}-file rsync tree, "
        f"{sizes.get('huge_file', 0) // MIB} MiB for the RSS run, "
        f"{sizes.get('random_writes', '?')} random 4 KiB writes in a "
        f"{sizes.get('rand_write_file', 0) // MIB} MiB file"
        + (" (quick mode)" if c.get("quick") else ""),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="render a benchmark result file")
    p.add_argument("file", type=Path)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    print(render(json.loads(args.file.read_text()), markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
