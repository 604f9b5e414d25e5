"""``benchmarks.fuse_floor``: a null pyfuse3 filesystem answers what cosencfs does per new file."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench.benchrun import MOUNTS, run_module

pytestmark = MOUNTS


def test_the_floor_counts_the_same_requests_per_file_as_a_cosencfs_mount(tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    printed = run_module(
        "benchmarks.fuse_floor", "--files", "40", "--runs", "1", "--json", str(out),
        "--workdir-base", str(tmp_path), timeout=120,
    )  # fmt: skip
    (run,) = json.loads(out.read_text())["runs"]
    # The kernel asked the null filesystem what it asks cosencfs for each new
    # file (tests/bench/test_cpu_benchmarks.py counts those): a negative
    # lookup, create, write, flush, release, and the directory's getattr.
    for op in ("lookup", "create", "write", "flush", "release"):
        assert run["fuse"][op] == 40, run["fuse"]
    assert 39 <= run["fuse"].get("getattr", 0) <= 40, run["fuse"]
    # And nothing else: no security.capability getxattr before the writes
    # (write-only handles are direct_io, as in cosencfs).
    assert set(run["fuse"]) == {"lookup", "create", "getattr", "write", "flush", "release"}
    assert run["loop_ms"] > 0
    assert run["client_ms"] > 0
    assert "ms/file" in printed
    # Nothing left mounted under the work directory.
    mounts = Path("/proc/mounts").read_text().splitlines()
    assert not any(line.split()[1].startswith(str(tmp_path)) for line in mounts)
