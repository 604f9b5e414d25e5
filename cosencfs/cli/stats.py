"""``cosencfs stats``: a running mount's requests, cost, cache and uploads, and reading them.

The control channel is the mount root's extended attributes (see
``fuse_ops.ControlledOperations``): no socket to secure or clean up, and
only processes that can reach the mount can use it.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from cosencfs.fs.control import XATTR_STATS

#: COS bills requests per 10,000, reads and writes at different prices.
WRITE_OPS = frozenset(
    {
        "PutObject",
        "CopyObject",
        "DeleteObject",
        "DeleteMultipleObjects",
        "InitiateMultipartUpload",
        "UploadPart",
        "UploadPartCopy",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
    }
)


def read_stats(mountpoint: str) -> dict[str, Any]:
    try:
        raw = os.getxattr(mountpoint, XATTR_STATS)
    except OSError as exc:
        raise SystemExit(
            f"cosencfs: {mountpoint} is not a cosencfs mount ({exc.strerror})"
        ) from None
    data: dict[str, Any] = json.loads(raw)
    return data


def request_units(requests: dict[str, int]) -> dict[str, float]:
    writes = sum(n for op, n in requests.items() if op in WRITE_OPS)
    reads = sum(requests.values()) - writes
    return {"read": reads / 10_000, "write": writes / 10_000}


def mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB"


def _connections(c: dict[str, int]) -> str:
    line = f"connections  {c.get('opened', 0)} opened"
    if c.get("tls_full") or c.get("tls_resumed"):
        line += f" (TLS: {c.get('tls_full', 0)} full, {c.get('tls_resumed', 0)} resumed)"
    return line


def format_stats(s: dict[str, Any]) -> str:
    store, cache, dirty, up = s["store"], s["cache"], s["dirty"], s["uploads"]
    units = request_units(store["requests"])
    lines = [
        f"requests     {store['total_requests']}  (failed {sum(store['failures'].values())},"
        f" retried {store['retries']})",
    ]
    lines += [f"  {op:<26} {n}" for op, n in store["requests"].items()]
    lines += [
        f"cost         {units['read']:.4f} read + {units['write']:.4f} write request units"
        " (1 unit = 10,000 requests)",
        f"transferred  up {mib(store['bytes_up'])}, down {mib(store['bytes_down'])}",
        _connections(store.get("connections", {})),
        f"cache        {mib(cache['bytes'])} of {mib(cache['limit'])},"
        f" hit ratio {cache['hit_ratio']:.1%} ({cache['hits']} hits, {cache['misses']} misses)",
        f"dirty        {dirty['files']} files, {mib(dirty['bytes'])}",
        f"uploads      {up['queued']} queued, {up['done']} done, {up['failed']} failed"
        + (
            f" (failing now: {up['failing_now']}; last error: {up['last_error']})"
            if up["failing_now"]
            else ""
        ),
    ]
    proc = s.get("process")
    if proc is not None:
        off = not proc["dumpable"] and not proc["core_limit"]
        lines.append(
            f"process      core dumps {'off' if off else 'POSSIBLE'}"
            f" (dumpable {proc['dumpable']}, core limit {proc['core_limit']})"
        )
    return "\n".join(lines)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    s = read_stats(args.mountpoint)
    s["cost_units"] = request_units(s["store"]["requests"])
    print(json.dumps(s, indent=2, sort_keys=True) if args.json else format_stats(s))
    return 0
