"""``benchmarks.write_cpu`` runs through a real mount and reports CPU per write.

No timing assertion (the CPU figures are for docs/performance.md): this checks
that the script works, that every pwrite reached the daemon as one FUSE write,
and that the fsync after them uploaded the file again.
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


def test_write_cpu_reports_cpu_per_write_and_of_the_upload(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.write_cpu", "--file-mib", "4", "--writes", "50",
         "--runs", "1", "--json", str(out), "--workdir-base", str(tmp_path)],
        cwd=REPO, capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    data = json.loads(out.read_text())
    (net,) = data["networks"]
    (run,) = net["runs"]["cosencfs"]
    assert run["daemon_us_per_write"] >= 0
    assert run["upload_ms"] >= 0
    assert run["fuse"]["write"] == 50, run["fuse"]
    # The rewritten file went up again after the fsync.
    assert sum(run["cos_upload"].values()) >= 1, run["cos_upload"]
    assert "us/write" in done.stdout.decode()
