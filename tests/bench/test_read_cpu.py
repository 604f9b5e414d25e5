"""``benchmarks.read_cpu`` runs: a cold read of a tagged and an untagged file,
through this tree and a baseline revision (no timing assertions)."""

from __future__ import annotations

from tests.bench.benchrun import MOUNTS, run_module

pytestmark = MOUNTS


def test_read_cpu_against_a_baseline() -> None:
    out = run_module(
        "benchmarks.read_cpu", "--size-mib", "4", "--runs", "1", "--settle", "0", "--untagged",
        "--baseline", "HEAD", timeout=600,
    )  # fmt: skip
    for label in ("cosencfs tagged", "cosencfs untagged", "cosencfs@HEAD tagged"):
        assert f"  {label}: " in out, out
