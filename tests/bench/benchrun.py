"""What the tests that run a benchmark script through a real mount share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: The ``pytestmark`` of a test module that mounts.
MOUNTS = [
    pytest.mark.mount,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root here"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
]


def run_module(module: str, *args: str, timeout: float) -> str:
    """Run ``python -m module args`` from the repository; fail with its stderr; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO, capture_output=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return done.stdout.decode()
