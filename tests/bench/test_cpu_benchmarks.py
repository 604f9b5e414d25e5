"""``benchmarks.create_cpu``, ``write_cpu`` and ``seqwrite_cpu`` run through a real mount.

No timing assertion (the CPU figures are for docs/performance.md): these check
that the scripts work, that the mount's FUSE request counters are read, and
the request targets of issues 17/18 (<= 1.05 COS requests per small file; a
rewritten file goes up again after its fsync).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.bench.benchrun import MOUNTS, run_module

pytestmark = MOUNTS


def _one_run(tmp_path: Path, module: str, *args: str) -> tuple[dict[str, Any], str]:
    """The script's one run of this tree (``--runs 1``), and what it printed."""
    out = tmp_path / "cpu.json"
    printed = run_module(
        module, *args, "--runs", "1", "--json", str(out), "--workdir-base", str(tmp_path),
        timeout=300,
    )  # fmt: skip
    (net,) = json.loads(out.read_text())["networks"]
    (run,) = net["runs"]["cosencfs"]
    return run, printed


def test_create_cpu_reports_cpu_and_requests_per_file(tmp_path: Path) -> None:
    run, printed = _one_run(tmp_path, "benchmarks.create_cpu", "--files", "40")
    assert run["daemon_ms_per_file"] > 0
    assert run["server_ms_per_file"] > 0
    # Every file is created, written once and closed: the counters saw it.
    for op in ("create", "write", "flush", "release"):
        assert run["fuse"][op] == 40, run["fuse"]
    assert run["cos"]["PutObject"] >= 40
    assert run["cos_per_file"] <= 1.05 + 3 / 40  # the directory's index and listing pages
    assert "ms/file" in printed


def test_write_cpu_reports_cpu_per_write_and_of_the_upload(tmp_path: Path) -> None:
    run, printed = _one_run(tmp_path, "benchmarks.write_cpu", "--file-mib", "4", "--writes", "50")
    assert run["daemon_us_per_write"] >= 0
    assert run["upload_ms"] >= 0
    assert run["fuse"]["write"] == 50, run["fuse"]
    # The rewritten file went up again after the fsync.
    assert sum(run["cos_upload"].values()) >= 1, run["cos_upload"]
    assert "us/write" in printed


def test_seqwrite_cpu_reports_cpu_per_mib_and_the_requests(tmp_path: Path) -> None:
    run, printed = _one_run(tmp_path, "benchmarks.seqwrite_cpu", "--size-mib", "40")
    assert run["daemon_s"] > 0
    assert run["loop_s"] >= 0
    assert run["fuse"]["write"] == 40, run["fuse"]
    # Streamed while written: one initiate, a PUT per 8 MiB part, complete, the
    # copy that puts the final metadata, the companion of the chunk tags.
    assert run["cos"]["UploadPart"] == 5, run["cos"]
    assert run["cos"]["InitiateMultipartUpload"] == run["cos"]["CompleteMultipartUpload"] == 1
    assert run["cos"]["CopyObject"] == 1
    assert "ms/MiB" in printed
