"""``benchmarks.integrity_cost`` runs over the suite's latency server and checks the
request targets of issue 14 (no timing assertions: how fast is its printout's job).

A tagged mount costs exactly one PUT more than an untagged one to write a
large file (the companion) and one GET more to open it cold; a small file
costs nothing extra.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root here"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
]


def test_integrity_cost_at_a_latency(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.integrity_cost", "--size-mib", "2", "--runs", "1",
         "--rtt-ms", "5", "--small-kib", "64", "--json", str(out)],
        cwd=REPO, capture_output=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    data = json.loads(out.read_text())
    (net,) = data["networks"]
    assert net["network"] == "5 ms http"
    for what in ("write_s", "read_s", "write_cpu", "read_cpu"):
        assert set(net[what]["median"]) == {"tagged", "untagged"}
    tagged, untagged = net["requests"]["tagged"], net["requests"]["untagged"]
    assert tagged["small_write"] == untagged["small_write"]
    assert (
        tagged["large_write"].get("PutObject", 0) == untagged["large_write"].get("PutObject", 0) + 1
    )
    assert tagged["large_first_open_read"]["GetObject"] == (
        untagged["large_first_open_read"]["GetObject"] + 1
    )
    assert "5 ms http" in done.stdout.decode()
