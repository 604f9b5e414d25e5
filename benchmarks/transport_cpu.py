"""CPU per request of cosencfs's COS client, over http and https.

The local server runs in its own process (``benchmarks.server``); this
process measures its own CPU (``time.process_time``: every thread) around
batches of requests through ``CosStore``, the path every mount request takes
(signing, retries, counters, transport).  Only store methods that every
revision since the first transport has (``put``, ``head``, ``get``) are used,
so the same script measures an older checkout too::

    python -m benchmarks.transport_cpu                       # this checkout
    PYTHONPATH=/path/to/old/checkout python benchmarks/transport_cpu.py

Medians of ``--repeat`` batches, interleaved across request kinds.  Three
tables: the CPU of the whole process (every thread), of the event loop's
thread alone (``time.thread_time``), which answers a mount's FUSE requests
and is what a worker-thread job frees, and of the local server's process
(``/proc/PID/stat``, clock ticks: batches of ``--large`` 8 MiB bodies keep
its resolution within a few percent), which shares the machine's CPUs with
the client in every benchmark and so is part of what https costs there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

if __package__ in (None, ""):
    # Run as a file (an older checkout first on PYTHONPATH): find benchmarks.
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from benchmarks.server import BUCKET, REGION, SECRET_ID, SECRET_KEY, LocalServer, Network
from cosencfs.store.cos import CosSettings, CosStore

SMALL = 4096
LARGE = 8 * 1024 * 1024
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (every thread, ended ones too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _store(server: LocalServer) -> CosStore:
    kw: dict[str, object] = {}
    if server.ca is not None:
        if "ca_file" in CosSettings.__dataclass_fields__:
            kw["ca_file"] = str(server.ca)
        else:  # revisions before the transport: requests and ssl read these
            os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = str(server.ca)
    return CosStore(
        CosSettings(
            bucket=BUCKET,
            region=REGION,
            endpoint=server.url,
            secret_id=SECRET_ID,
            secret_key=SECRET_KEY,
            **kw,  # type: ignore[arg-type]
        )
    )


Sample = tuple[float, float, float]


async def _batch(
    server_pid: int, n: int, width: int, one: Callable[[int], Awaitable[object]]
) -> Sample:
    """CPU seconds per request for ``n`` requests, ``width`` at a time: the
    process's, the loop thread's and the server's."""
    start = time.process_time()
    loop_start = time.thread_time()
    server_start = _cpu_of(server_pid)
    for at in range(0, n, width):
        async with trio.open_nursery() as nursery:
            for i in range(at, min(n, at + width)):
                nursery.start_soon(one, i)
    return (
        (time.process_time() - start) / n,
        (time.thread_time() - loop_start) / n,
        (_cpu_of(server_pid) - server_start) / n,
    )


async def _measure(
    server: LocalServer, n: int, n_large: int, repeat: int
) -> dict[str, dict[str, float]]:
    store = _store(server)
    small = b"s" * SMALL
    large = b"L" * LARGE
    await store.put("cpu/small", small, {})
    await store.put("cpu/large", large, {})
    if server.proc is None:
        raise RuntimeError("the local server is not running")
    pid = server.proc.pid
    kinds: dict[str, Callable[[], Awaitable[Sample]]] = {
        "HEAD, one at a time": lambda: _batch(pid, n, 1, lambda i: store.head("cpu/small")),
        "HEAD, 16 in parallel": lambda: _batch(pid, n, 16, lambda i: store.head("cpu/small")),
        "GET 4 KiB range": lambda: _batch(
            pid,
            n,
            1,
            lambda i: store.get("cpu/large", (i * SMALL) % LARGE, (i * SMALL) % LARGE + SMALL),
        ),
        "PUT 4 KiB": lambda: _batch(pid, n, 1, lambda i: store.put(f"cpu/p{i % 8}", small, {})),
        "GET 8 MiB": lambda: _batch(pid, n_large, 1, lambda i: store.get("cpu/large")),
        "PUT 8 MiB": lambda: _batch(pid, n_large, 1, lambda i: store.put("cpu/l2", large, {})),
        # A mount's parts and read-ahead pieces go several at once.
        "GET 8 MiB, 4 in parallel": lambda: _batch(
            pid, n_large, 4, lambda i: store.get("cpu/large")
        ),
        "PUT 8 MiB, 4 in parallel": lambda: _batch(
            pid, n_large, 4, lambda i: store.put(f"cpu/l{3 + i % 4}", large, {})
        ),
    }
    samples: dict[str, list[Sample]] = {k: [] for k in kinds}
    for run in kinds.values():  # warm the connections and code paths
        await run()
    for _ in range(repeat):
        for kind, run in kinds.items():
            samples[kind].append(await run())
    store.close()
    return {
        "process": {k: statistics.median(s[0] for s in v) * 1000 for k, v in samples.items()},
        "loop": {k: statistics.median(s[1] for s in v) * 1000 for k, v in samples.items()},
        "server": {k: statistics.median(s[2] for s in v) * 1000 for k, v in samples.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=400, help="small requests per batch")
    p.add_argument("--large", type=int, default=16, help="8 MiB bodies per batch")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="cosencfs-cpu-") as tmp:
        for https in (False, True):
            network = Network(0.0, https)
            root = Path(tmp) / ("https" if https else "http")
            with LocalServer(root / "srv", root / "server.log", network) as server:
                results[network.label] = trio.run(
                    _measure, server, args.requests, args.large, args.repeat
                )
    labels = list(results)
    for part, title in (
        ("process", "ms CPU"),
        ("loop", "ms loop-thread CPU"),
        ("server", "ms server CPU"),
    ):
        print("| request | " + " | ".join(f"{title}, {lab}" for lab in labels) + " |")
        print("|---|" + "---|" * len(labels))
        for kind in results[labels[0]][part]:
            cells = " | ".join(f"{results[lab][part][kind]:.3f}" for lab in labels)
            print(f"| {kind} | {cells} |")
        print()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
