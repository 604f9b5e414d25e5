"""``benchmarks.create_cpu`` runs through a real mount and reports per-file costs.

No timing assertion (the CPU figures are for docs/performance.md): this checks
that the script works, that the mount's FUSE request counters are read, and
the request target of issue 17/18 (<= 1.05 COS requests per small file).
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


def test_create_cpu_reports_cpu_and_requests_per_file(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.create_cpu", "--files", "40", "--runs", "1",
         "--json", str(out), "--workdir-base", str(tmp_path)],
        cwd=REPO, capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    data = json.loads(out.read_text())
    (net,) = data["networks"]
    (run,) = net["runs"]["cosencfs"]
    assert run["daemon_ms_per_file"] > 0
    assert run["server_ms_per_file"] > 0
    # Every file is created, written once and closed: the counters saw it.
    for op in ("create", "write", "flush", "release"):
        assert run["fuse"][op] == 40, run["fuse"]
    assert run["cos"]["PutObject"] >= 40
    assert run["cos_per_file"] <= 1.05 + 3 / 40  # the directory's index and listing pages
    assert "ms/file" in done.stdout.decode()
