"""``benchmarks.integrity_cost`` runs over the suite's latency server and checks the
request targets of issue 14 (no timing assertions: how fast is its printout's job).

A tagged mount costs exactly one PUT more than an untagged one to write a
large file (the companion) and one GET more to open it cold; a small file
costs nothing extra.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench.benchrun import MOUNTS, run_module

pytestmark = MOUNTS


def test_integrity_cost_at_a_latency(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    printed = run_module(
        "benchmarks.integrity_cost", "--size-mib", "2", "--runs", "1", "--rtt-ms", "5",
        "--small-kib", "64", "--json", str(out), timeout=600,
    )  # fmt: skip
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
    assert "5 ms http" in printed
