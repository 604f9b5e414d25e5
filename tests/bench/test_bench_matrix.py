"""The suite's bookkeeping over networks and repeats: medians, spread, the matrix, --scale.

Pure functions on made-up rows (no mount), plus one tiny ``--scale`` run
as root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.matrix import matrix, median_rows, parse_networks
from benchmarks.results import Row
from benchmarks.scale import scale_table, scale_targets
from benchmarks.server import Network
from benchmarks.tlscost import tls_table

REPO = Path(__file__).resolve().parents[2]


def _row(peer: str, rate: float, network: str = "0 ms http", run: int = 0) -> Row:
    return Row(peer=peer, workload="rand_read", seconds=1000 / rate, rate=rate, unit="ops/s",
               network=network, extra={"run": run})  # fmt: skip


def test_networks_are_every_rtt_times_every_scheme() -> None:
    nets = parse_networks("0,10", https=False, both=True)
    assert nets == [Network(0, False), Network(0, True), Network(10, False), Network(10, True)]
    assert [n.label for n in nets] == ["0 ms http", "0 ms https", "10 ms http", "10 ms https"]
    assert parse_networks("", https=True, both=False) == [Network(0, True)]
    with pytest.raises(SystemExit):
        parse_networks("-1", https=False, both=False)


def test_the_median_run_is_kept_with_every_run_and_the_spread() -> None:
    rows = [_row("cosencfs", r, run=i) for i, r in enumerate((100.0, 300.0, 200.0))]
    rows += [_row("cosencfs", 50.0, network="10 ms http")]
    out = median_rows(rows)
    assert len(out) == 2
    mid = next(r for r in out if r.network == "0 ms http")
    assert mid.rate == 200.0
    assert mid.extra["run"] == 2
    assert mid.extra["runs"] == [100.0, 200.0, 300.0]
    assert mid.extra["spread"] == pytest.approx(1.0)  # (300 - 100) / 200


def test_a_failed_run_is_left_out_of_the_median_and_counted() -> None:
    bad = Row(peer="rclone", workload="rand_read", network="0 ms http", error="boom")
    out = median_rows([_row("rclone", 10.0), bad, _row("rclone", 30.0)])
    assert len(out) == 1
    assert out[0].extra["failed_runs"] == 1
    assert out[0].extra["runs"] == [10.0, 30.0]


def test_the_matrix_has_a_column_per_network_and_peer() -> None:
    rows = median_rows([_row("cosencfs", 100.0), _row("s3fs", 200.0),
                        _row("cosencfs", 20.0, network="10 ms https")])  # fmt: skip
    headers, body = matrix(rows, ["cosencfs", "s3fs"], ["0 ms http", "10 ms https"])
    assert headers == ["workload", "cosencfs 0 ms http", "s3fs 0 ms http",
                       "cosencfs 10 ms https", "s3fs 10 ms https"]  # fmt: skip
    assert body == [["rand_read", "100 ops/s", "200 ops/s", "20 ops/s", ""]]


def test_scale_table_of_no_scale_run_is_none() -> None:
    assert scale_table([]) is None
    assert scale_targets([]) is None


def test_scale_targets_are_marked_met_or_not() -> None:
    def row(w: str, n: int, net: str, seconds: float, rate: float | None = None) -> dict[str, Any]:
        r = Row(peer="cosencfs", workload=w, variant=str(n), network=net, seconds=seconds,
                rate=rate, extra={"peak_rss_all": 150 * 1024 * 1024})  # fmt: skip
        return r.as_dict()

    data = [row("scale_ls_cold", 10_000, "10 ms http", 0.8),
            row("scale_ls_warm", 10_000, "10 ms http", 0.5),
            row("scale_create", 10_000, "0 ms http", 12.5, rate=800.0)]  # fmt: skip
    out = scale_targets(data)
    assert out is not None
    verdicts = {label: verdict for label, _, verdict in out[1]}
    assert verdicts == {
        "cold ls -l of 10,000 files at 10 ms <= 1 s": "met",
        "warm ls -l of 10,000 files at 10 ms <= 0.3 s": "NOT met",
        "cold ls -l of 100,000 files at 10 ms <= 10 s": "n/a",
        "daemon peak RSS with 100,000 files < 200 MiB": "n/a",
        "creation until in the bucket at 0 ms >= 1000 files/s": "NOT met",
    }


@pytest.mark.mount
@pytest.mark.timeout(300)
@pytest.mark.skipif(os.geteuid() != 0, reason="the benchmark suite needs root")
@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")
def test_scale_runs_every_step_on_cosencfs(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--peers", "cosencfs",
         "--scale-only", "--scale", "30", "--rtt-ms", "1", "--out", str(out),
         "--workdir-base", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["rows"] == []
    scale = {r["workload"]: r for r in data["scale"]}
    assert set(scale) == {"scale_create", "scale_ls_cold", "scale_ls_warm", "scale_rm"}
    for key, r in scale.items():
        assert r["error"] is None, (key, r["error"])
        assert r["variant"] == "30"
        assert r["network"] == "1 ms http"
    assert scale["scale_create"]["requests"].get("PutObject") == 30
    assert scale["scale_create"]["extra"]["peak_rss_all"] > 0
    table = scale_table(data["scale"])
    assert table is not None
    assert table[1][0][:3] == ["1 ms http", "30", "cosencfs"]
    assert "Scale" in done.stdout


def test_https_rows_are_compared_with_the_same_rows_over_http() -> None:
    def row(peer: str, workload: str, network: str, *, rate: float | None = None,
            seconds: float = 1.0) -> Row:  # fmt: skip
        return Row(peer=peer, workload=workload, seconds=seconds, rate=rate, network=network)

    rows = [
        row("cosencfs", "seq_read", "0 ms http", rate=300.0),
        row("cosencfs", "seq_read", "0 ms https", rate=250.0),  # 1.20x slower
        row("cosencfs", "small_create", "0 ms http", seconds=2.0),
        row("cosencfs", "small_create", "0 ms https", seconds=2.1),  # 1.05x
        row("s3fs", "seq_read", "0 ms http", rate=400.0),
        row("s3fs", "seq_read", "0 ms https", rate=400.0),
        row("cosencfs", "seq_read", "10 ms http", rate=200.0),  # no https run at 10 ms
    ]
    nets = [Network(0, False), Network(0, True), Network(10, False)]
    table = tls_table(rows, ["cosencfs", "s3fs"], nets)
    assert table is not None
    headers, body = table
    assert headers == ["rtt", "workload", "cosencfs https/http", "s3fs https/http",
                       "cosencfs <= 1.10"]  # fmt: skip
    assert body == [
        ["0 ms", "seq_read", "1.20", "1.00", "**not met**"],
        ["0 ms", "small_create", "1.05", "", "met"],
    ]
    assert tls_table(rows, ["cosencfs"], [Network(0, False), Network(10, False)]) is None


def test_a_worker_threads_wait_for_a_job_is_idle_not_a_hand_off() -> None:
    from benchmarks.profiling import category

    assert category("WorkerThread._work (trio/_core/_thread_cache.py)").endswith("(idle)")
    assert category("ThreadCache.start_thread_soon (trio/_core/_thread_cache.py)").startswith(
        "thread hand-off"
    )


def test_scale_runs_the_baseline_revision_as_cosencfs_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--scale-only --baseline REV`` ran HEAD as cosencfs-base: a tree against itself."""
    import types

    from benchmarks import scale
    from benchmarks.peers import PEERS, BaselinePeer
    from benchmarks.system import BenchError

    revs: list[str] = []

    class Stopped(BaselinePeer):
        def missing(self) -> str | None:
            return None

        def setup(self) -> None:
            revs.append(self.rev)
            raise BenchError("stopped before mounting")

        def teardown(self) -> None:
            pass

    monkeypatch.setitem(PEERS, "cosencfs-base", Stopped)
    cfg = types.SimpleNamespace(workdir=tmp_path, keep=True, baseline="abc123")
    ctx = types.SimpleNamespace(cfg=cfg)
    rows = scale.run_scale(ctx, [Network(10, False)], ["cosencfs-base"], [30], lambda _: None)  # type: ignore[arg-type]
    assert revs == ["abc123"]
    assert rows[0].error is not None
