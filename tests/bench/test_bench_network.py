"""The suite over the latency model and TLS: peers used https when asked, round trips charged.

Counts, not timing: the local server counts every connection it accepted
(TLS or plain, for the peer's whole run) and every round trip it charged.
A peer that is not installed here is skipped by the suite and by this test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RTT_MS = 2.0

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(os.geteuid() != 0, reason="the benchmark suite needs root"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
]


def _peers() -> list[str]:
    venv_rclone = Path(sys.executable).parent / "rclone"
    peers = ["cosencfs"]
    if venv_rclone.exists() or shutil.which("rclone"):
        peers.append("rclone")
    if shutil.which("s3fs"):
        peers.append("s3fs")
    return peers


def _mounts_under(path: Path) -> list[str]:
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(real)]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One quick run: every installed peer, http and https, RTT_MS, two workloads."""
    tmp = tmp_path_factory.mktemp("bench-net")
    out, work = tmp / "result.json", tmp / "work"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--peers", ",".join(_peers()),
         "--only", "seq_write,small_create", "--rtt-ms", str(RTT_MS), "--http-and-https",
         "--out", str(out), "--workdir-base", str(work)],
        cwd=REPO, capture_output=True, text=True, timeout=500, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert not _mounts_under(tmp), "the suite left a mount behind"
    data: dict[str, Any] = json.loads(out.read_text())
    return data


@pytest.mark.timeout(600)
def test_every_peer_ran_over_https_when_asked(result: dict[str, Any]) -> None:
    runs = result["peer_runs"]
    assert {r["name"] for r in runs} == set(_peers())
    https = [r for r in runs if r["network"] == f"{RTT_MS:g} ms https"]
    plain = [r for r in runs if r["network"] == f"{RTT_MS:g} ms http"]
    assert len(https) == len(plain) == len(_peers())
    for r in https:
        assert r["status"] == "ok", r
        c = r["connections"]
        assert c["tls_connections"] > 0, r
        assert c["plain_connections"] == 0, r
        assert c["tls_failures"] == 0, r
    # The control: over http the same counters see plain connections only.
    for r in plain:
        assert r["status"] == "ok", r
        assert r["connections"]["plain_connections"] > 0, r
        assert r["connections"]["tls_connections"] == 0, r


@pytest.mark.timeout(600)
def test_every_request_of_a_row_was_charged_one_rtt(result: dict[str, Any]) -> None:
    rows = [r for r in result["rows"] if r["requests"]]
    assert {r["peer"] for r in rows} == set(_peers())
    for r in rows:
        net = r["extra"]["net"]
        trips = net["round_trips"]
        assert trips.get("request", 0) == r["total_requests"], (r["peer"], r["key"], net)
        assert net["charged_ms"] == pytest.approx(net["total_round_trips"] * RTT_MS)
        if r["network"].endswith("https"):
            # Each connection the row opened shook hands first.
            assert trips.get("tls_handshake", 0) >= net["tls_connections"]
            assert net["plain_connections"] == 0
        else:
            assert "tls_handshake" not in trips
        assert trips.get("connect", 0) == net["connections"]
