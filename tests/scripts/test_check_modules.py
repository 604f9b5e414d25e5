"""scripts/check_modules.py: the lint that keeps every module to one job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "scripts" / "check_modules.py"


def run(package: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECK), str(package)], capture_output=True, text=True, check=False
    )


def test_the_package_passes() -> None:
    done = run(ROOT / "cosencfs")
    assert done.returncode == 0, done.stderr


def test_a_long_module_and_a_missing_docstring_fail(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "ok.py").write_text('"""Owns one thing."""\n' + "x = 1\n" * 449)
    (pkg / "long.py").write_text('"""Owns too much."""\n' + "x = 1\n" * 450)
    (pkg / "bare.py").write_text("x = 1\n")
    done = run(pkg)
    assert done.returncode == 1
    assert "long.py: 451 lines (at most 450)" in done.stderr
    assert "bare.py: no docstring" in done.stderr
    assert "ok.py" not in done.stderr
