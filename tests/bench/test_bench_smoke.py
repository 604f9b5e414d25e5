"""The benchmark suite in --quick mode on cosencfs: every workload row is there and sane.

No timing assertions: this checks that the suite runs (CI runs it), not how
fast cosencfs is. The suite runs as a subprocess, exactly as ``make bench``
would, with its temporary directory under this test's tmp_path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(os.geteuid() != 0, reason="the benchmark suite needs root"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
]

#: Every row the quick suite must produce for cosencfs (workload:variant).
EXPECTED_ROWS = {
    "seq_write",
    "seq_read",
    "small_create",
    "ls_cold:same cache",
    "ls_warm:same cache",
    "ls_cold:empty cache",
    "ls_warm:empty cache",
    "rand_read",
    "rm_r",
    "rsync:first",
    "rsync:second",
    "big_write_rss",
    "rand_write",
    "rand_read_big",
    "cache_bound",
}


def _mounts_under(path: Path) -> list[str]:
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(real)]


@pytest.mark.timeout(240)
def test_quick_suite_on_cosencfs(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    work = tmp_path / "work"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--peers", "cosencfs",
         "--out", str(out), "--workdir-base", str(work)],
        cwd=REPO, capture_output=True, text=True, timeout=220, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert not _mounts_under(tmp_path), "the suite left a mount behind"
    assert not list(work.iterdir()), "the suite left its temporary directory behind"

    data: dict[str, Any] = json.loads(out.read_text())
    assert data["config"]["quick"] is True
    assert [p["name"] for p in data["peers"]] == ["cosencfs"]
    assert data["peers"][0]["status"] == "ok", data["peers"][0]
    assert data["peers"][0]["exit_status"] == 0

    rows = {r["key"]: r for r in data["rows"]}
    assert set(rows) == EXPECTED_ROWS
    for key, r in rows.items():
        assert r["peer"] == "cosencfs"
        assert r["error"] is None, (key, r["error"])
        assert isinstance(r["seconds"], float), key
        assert r["seconds"] > 0, key
        assert isinstance(r["rate"], float), key
        assert r["rate"] > 0, key
        assert r["unit"], key
        assert isinstance(r["requests"], dict), key
        assert all(isinstance(n, int) and n > 0 for n in r["requests"].values()), key
        assert r["total_requests"] == sum(r["requests"].values()), key
        assert r["bytes_up"] >= 0, key
        assert r["bytes_down"] >= 0, key
        assert r["label"], key

    sizes = data["config"]["sizes"]
    assert rows["seq_write"]["bytes_up"] >= sizes["big_file"]
    assert rows["seq_read"]["bytes_down"] >= sizes["big_file"]
    assert rows["big_write_rss"]["bytes_up"] >= sizes["huge_file"]
    assert rows["big_write_rss"]["extra"]["peak_rss"] > 10 * MIB
    assert rows["small_create"]["total_requests"] >= sizes["small_files"]
    deletes = rows["rm_r"]["requests"]
    assert deletes.get("DeleteObject", 0) + deletes.get("DeleteMultipleObjects", 0) > 0
    assert rows["rand_read"]["bytes_down"] > 0
    assert rows["rand_write"]["bytes_up"] >= sizes["rand_write_file"]
    for variant in ("same cache", "empty cache"):
        warm = rows[f"ls_warm:{variant}"]
        assert warm["extra"]["zero_requests"] in (True, False)
        assert "client_total_requests" in warm["extra"]

    numbers = ["1", "2", "3", "4a", "4b", "5", "6", "7", "8", "9", "10"]
    assert [t["number"] for t in data["targets"]] == numbers
    for t in data["targets"]:
        assert t["met"] in (True, False, None)
        assert t["measured"]
    # Targets needing only cosencfs are evaluated; those against rclone are n/a.
    by_number = {t["number"]: t for t in data["targets"]}
    assert by_number["7"]["met"] is not None
    assert by_number["8"]["met"] is not None
    assert by_number["9"]["met"] is not None
    assert by_number["10"]["met"] is not None
    assert rows["rand_read_big"]["extra"]["down_per_read"] > 0
    assert rows["cache_bound"]["extra"]["cache_limit"] == sizes["big_file"] // 4
    # Every row says what the server charged for it (the latency model's counters).
    for key, r in rows.items():
        assert r["extra"]["net"]["round_trips"].get("request", 0) == r["total_requests"], key
    assert by_number["1"]["met"] is None

    assert "seq_write" in done.stdout
    assert "Targets" in done.stdout
