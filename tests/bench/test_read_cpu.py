"""``benchmarks.read_cpu`` runs: a cold read of a tagged and an untagged file,
through this tree and a baseline revision (no timing assertions)."""

from __future__ import annotations

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


def test_read_cpu_against_a_baseline() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.read_cpu", "--size-mib", "4", "--runs", "1",
         "--settle", "0", "--untagged", "--baseline", "HEAD"],
        cwd=REPO, capture_output=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    out = done.stdout.decode()
    for label in ("cosencfs tagged", "cosencfs untagged", "cosencfs@HEAD tagged"):
        assert f"  {label}: " in out, out
