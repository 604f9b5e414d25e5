"""What integrity tags cost a mount: time and requests, tagged against untagged.

Two cosencfs mounts of one local COS server, one writing tagged objects (the
default) and one with the benchmark's own switch ``--x-bench-untagged``,
measured interleaved (tagged, untagged, untagged, tagged, ...) so that drift
on a shared machine hits both alike:

- sequential write of ``--size-mib`` until it is in the bucket (write, fsync);
- sequential cold read of it (a new mount with an empty cache directory);
- requests: writing a file of ``--small-kib`` (tags inline: no extra
  request), writing a large file (its companion: one PUT) and opening it
  cold (one GET), from the mount's own request counters (``cosencfs stats``).

Each row is the median of ``--runs`` runs, with the spread (min-max);
``python -m benchmarks.integrity_cost --runs 5`` is the figure quoted in
docs/format.md, 12.11.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.system import clean_env, force_unmount, is_mounted
from cosencfs.crypto.keyfiles import generate_aes_key_file
from cosencfs.server import LocalCosServer

BUCKET = "cost-1250000000"
REGION = "ap-guangzhou"
SECRET_ID = "AKIDintegritycost"
SECRET_KEY = "integrity-cost-secret-0000"
MIB = 1024 * 1024
MODES = ("tagged", "untagged")


class Bench:
    def __init__(self, root: Path, server: LocalCosServer, key: Path) -> None:
        self.root = root
        self.server = server
        self.key = key
        self._n = 0

    @contextmanager
    def mount(self, mode: str) -> Iterator[Path]:
        self._n += 1
        mnt = self.root / f"mnt{self._n}"
        cache = self.root / f"cache{self._n}"
        mnt.mkdir()
        log = (self.root / f"mount{self._n}.log").open("wb")
        cmd = [
            sys.executable,
            "-m",
            "cosencfs",
            "mount",
            BUCKET,
            str(mnt),
            "--endpoint",
            self.server.url,
            "--region",
            REGION,
            "--key-file",
            str(self.key),
            "--cache-dir",
            str(cache),
            "--foreground",
            *(["--x-bench-untagged"] if mode == "untagged" else []),
        ]
        env = clean_env({"COS_SECRET_ID": SECRET_ID, "COS_SECRET_KEY": SECRET_KEY})
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
        log.close()
        try:
            deadline = time.monotonic() + 30
            while not is_mounted(mnt):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mount failed: {self.root / f'mount{self._n}.log'}")
                time.sleep(0.02)
            yield mnt
        finally:
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False, capture_output=True)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            force_unmount(mnt)
            shutil.rmtree(cache, ignore_errors=True)


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


def write_file(path: Path, block: bytes, size: int) -> float:
    start = time.perf_counter()
    with path.open("wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - start


def read_file(path: Path) -> float:
    start = time.perf_counter()
    with path.open("rb") as f:
        while f.read(MIB):
            pass
    return time.perf_counter() - start


def one_run(b: Bench, mode: str, size: int, block: bytes, i: int) -> dict[str, float]:
    name = f"seq-{mode}-{i}"
    with b.mount(mode) as mnt:
        w = write_file(mnt / name, block, size)
    with b.mount(mode) as mnt:
        r = read_file(mnt / name)
    return {"write_s": w, "read_s": r}


def request_costs(b: Bench, small: int, large: int, block: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        with b.mount(mode) as mnt:
            before = requests_of(mnt)
            write_file(mnt / f"small-{mode}", block[:small], small)
            mid = requests_of(mnt)
            write_file(mnt / f"large-{mode}", block, large)
            after = requests_of(mnt)
        with b.mount(mode) as mnt:
            opened = requests_of(mnt)
            with (mnt / f"large-{mode}").open("rb") as f:
                f.read(4096)
            first = requests_of(mnt)
        out[mode] = {
            "small_write": spent(before, mid),
            "large_write": spent(mid, after),
            "large_first_open_read": spent(opened, first),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--small-kib", type=int, default=1024)
    p.add_argument("--json", type=Path, help="write the results here too")
    args = p.parse_args(argv)
    size = args.size_mib * MIB
    block = os.urandom(MIB)
    root = Path(tempfile.mkdtemp(prefix="cosencfs-integrity-cost-", dir="/var/tmp"))
    try:
        key = root / "aes.key"
        generate_aes_key_file(key)
        with LocalCosServer(
            root / "server", buckets=[BUCKET], secret_id=SECRET_ID, secret_key=SECRET_KEY
        ) as server:
            b = Bench(root, server, key)
            runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
            for i in range(args.runs):
                order = MODES if i % 2 == 0 else MODES[::-1]
                for mode in order:
                    runs[mode].append(one_run(b, mode, size, block, i))
            costs = request_costs(b, args.small_kib * 1024, 24 * MIB, block)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result: dict[str, Any] = {"size_mib": args.size_mib, "runs": args.runs, "requests": costs}
    print(f"{args.size_mib} MiB, median of {args.runs} interleaved runs (min-max)")
    for what in ("write_s", "read_s"):
        med = {m: statistics.median(r[what] for r in runs[m]) for m in MODES}
        spread = {m: (min(r[what] for r in runs[m]), max(r[what] for r in runs[m])) for m in MODES}
        ratio = med["tagged"] / med["untagged"]
        result[what] = {"median": med, "spread": spread, "ratio": ratio}
        label = "sequential write until in bucket" if what == "write_s" else "cold sequential read"
        print(
            f"  {label}: tagged {med['tagged']:.2f} s ({spread['tagged'][0]:.2f}-"
            f"{spread['tagged'][1]:.2f}), untagged {med['untagged']:.2f} s "
            f"({spread['untagged'][0]:.2f}-{spread['untagged'][1]:.2f}), "
            f"ratio {ratio:.3f}"
        )
    for mode in MODES:
        print(f"  requests, {mode}: {json.dumps(costs[mode], sort_keys=True)}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
