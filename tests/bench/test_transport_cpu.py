"""``benchmarks.transport_cpu`` runs and reports every request kind over http and https.

No timing assertion: the numbers are for docs/performance.md; this checks
that the script works with the current store (the same script measures
older checkouts through PYTHONPATH).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_every_request_kind_is_measured_over_http_and_https(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.transport_cpu", "--requests", "8", "--large", "2",
         "--repeat", "1",
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert set(results) == {"0 ms http", "0 ms https"}
    for network in results.values():
        assert set(network) == {"process", "loop", "server"}
        for part, row in network.items():
            assert set(row) == {
                "HEAD, one at a time",
                "HEAD, 16 in parallel",
                "GET 4 KiB range",
                "PUT 4 KiB",
                "GET 8 MiB",
                "PUT 8 MiB",
                "GET 8 MiB, 4 in parallel",
                "PUT 8 MiB, 4 in parallel",
            }
            # The server's CPU is counted in clock ticks: a short batch may see none.
            assert all(ms > 0 if part != "server" else ms >= 0 for ms in row.values())
        # The loop thread's CPU is a part of the process's, give or take what
        # the clocks' reads do not see at the same instant: another thread's
        # running time not yet accounted when the process clock is read, and
        # the reads' own order.  A scheduler tick (4 ms at HZ=250) per batch
        # of 8 small or 2 large requests bounds it.
        for kind, ms in network["loop"].items():
            n = 2 if "8 MiB" in kind else 8
            assert ms <= network["process"][kind] * 1.01 + 4.0 / n
    assert "| HEAD, one at a time |" in done.stdout
    assert "ms loop-thread CPU, 0 ms https" in done.stdout
    assert "ms server CPU, 0 ms https" in done.stdout
