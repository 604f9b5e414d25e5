"""The Prometheus endpoint of a real mount, scraped and parsed with prometheus_client's parser."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from qcloud_cos import CosS3Client

from cosencfs.fs.control import XATTR_STATS
from cosencfs.server import LocalCosServer
from tests.testlib import BUCKET, Mount, MountFactory, sdk_config, start_server

pytestmark = pytest.mark.mount

RULES = Path(__file__).parents[2] / "contrib" / "prometheus" / "cosencfs-alerts.yml"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_port(m: Mount) -> int:
    found = re.search(r"metrics on http://\S+:(\d+)/metrics", m.log())
    assert found, m.log()
    return int(found.group(1))


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def one(samples: Samples, name: str, **labels: str) -> float:
    """The value of the one sample of ``name`` with ``labels`` (besides the target's)."""
    found = [
        v
        for (n, ls), v in samples.items()
        if n == name and all((k, w) in ls for k, w in labels.items())
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def by_label(samples: Samples, name: str, label: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for (n, ls), v in samples.items():
        if n == name:
            out[dict(ls)[label]] += int(v)
    return out


def daemon_stats(m: Mount) -> dict[str, dict[str, object]]:
    data: dict[str, dict[str, object]] = json.loads(os.getxattr(m.mountpoint, XATTR_STATS))
    return data


def sync(m: Mount) -> None:
    os.setxattr(m.mountpoint, b"user.cosencfs.sync", b"1")


def test_requests_scraped_equal_the_daemons_and_the_servers(
    mounts: MountFactory, server: LocalCosServer
) -> None:
    m = mounts(prefix="team", extra=["--metrics-addr", "127.0.0.1:0"])
    port = metrics_port(m)
    root = m.mountpoint
    (root / "d").mkdir()
    for i, size in enumerate((0, 1000, 300_000, 3_000_000)):
        (root / "d" / f"f{i}").write_bytes(os.urandom(size))
    sync(m)
    assert (root / "d" / "f2").read_bytes()
    (root / "d" / "f1").rename(root / "d" / "g1")
    (root / "d" / "f0").unlink()
    assert sorted(os.listdir(root / "d")) == ["f2", "f3", "g1"]
    sync(m)
    # Deleted behind the mount's back: its next open asks COS, which says 404.
    CosS3Client(sdk_config(server.port)).delete_object(Bucket=BUCKET, Key="team/d/f3")
    with pytest.raises(FileNotFoundError):
        (root / "d" / "f3").read_bytes()

    first = scrape(port)
    stats = daemon_stats(m)
    again = scrape(port)
    store = stats["store"]
    scraped = by_label(first, "cosencfs_requests_total", "operation")
    assert scraped == by_label(again, "cosencfs_requests_total", "operation")
    assert dict(scraped) == store["requests"]
    at_server = Counter(server.stats())
    at_server["DeleteObject"] -= 1  # the SDK's
    assert scraped == +at_server
    assert {"PutObject", "HeadObject", "CopyObject"} <= set(scraped)
    failures: dict[str, int] = store["failures"]  # type: ignore[assignment]
    assert failures == {"HeadObject": 1}
    assert one(first, "cosencfs_requests_total", operation="HeadObject", outcome="failed") == 1
    for op, n in scraped.items():
        ok = one(first, "cosencfs_requests_total", operation=op, outcome="ok")
        failed = one(first, "cosencfs_requests_total", operation=op, outcome="failed")
        retried = one(first, "cosencfs_requests_total", operation=op, outcome="retried")
        assert ok == n - failures.get(op, 0)
        assert failed + retried == failures.get(op, 0)
        assert one(first, "cosencfs_request_duration_seconds_count", operation=op) == n
        assert one(first, "cosencfs_request_duration_seconds_bucket", operation=op, le="+Inf") == n

    assert one(first, "cosencfs_sent_bytes_total") == store["bytes_up"]
    assert one(first, "cosencfs_received_bytes_total") == store["bytes_down"]
    cache, uploads = stats["cache"], stats["uploads"]
    assert one(first, "cosencfs_cache_hits_total") == cache["hits"]
    assert one(first, "cosencfs_cache_misses_total") == cache["misses"]
    assert one(first, "cosencfs_uploads_total") == uploads["done"]
    assert one(first, "cosencfs_uploads_failed_total") == uploads["failed"] == 0
    assert one(first, "cosencfs_dirty_files") == 0
    assert one(first, "cosencfs_dirty_oldest_age_seconds") == 0
    assert one(first, "cosencfs_cos_up") == 1
    assert one(first, "cosencfs_errors_total", error="WrongKeyError") == 0
    # Every sample names the mount; no object name is a label value.
    for name, labels in first:
        if name.startswith("cosencfs_"):
            ls = dict(labels)
            assert (ls["bucket"], ls["prefix"]) == (BUCKET, "team"), name
            assert ls["mountpoint"] == os.path.realpath(root), name
            assert not {"f0", "f1", "f2", "f3", "g1", "d"} & set(ls.values())
    # The alert rules ask for nothing the endpoint does not serve.
    served = {re.sub(r"_(bucket|count|sum)$", "", n) for n, _ in first}
    asked = set(re.findall(r"\bcosencfs_[a-z_]+", RULES.read_text()))
    assert asked
    assert asked <= served, asked - served
    assert m.umount() == 0


def test_dirty_age_rises_while_the_server_is_down_and_falls_to_zero_after(
    mounts: MountFactory, server: LocalCosServer
) -> None:
    m = mounts(extra=["--metrics-addr", "127.0.0.1:0", "--request-deadline", "2"])
    port = metrics_port(m)
    (m.mountpoint / "before").write_bytes(b"x" * 5000)
    sync(m)
    assert one(scrape(port), "cosencfs_dirty_oldest_age_seconds") == 0

    root, server_port = server.root, server.port
    server.stop()
    restarted = None
    try:
        (m.mountpoint / "while-down").write_bytes(b"y" * 7000)
        # Wait for the background upload to fail (no answer: connection refused).
        deadline = time.monotonic() + 60
        while True:
            down = scrape(port)
            if one(down, "cosencfs_uploads_failed_total") >= 1:
                break
            assert time.monotonic() < deadline, m.log()
            time.sleep(0.2)
        assert one(down, "cosencfs_cos_up") == 0
        assert one(down, "cosencfs_dirty_files") == 1
        assert one(down, "cosencfs_dirty_bytes") == 7000
        assert one(down, "cosencfs_journal_dirty_records") == 1
        assert one(down, "cosencfs_uploads_failing") == 1
        age = one(down, "cosencfs_dirty_oldest_age_seconds")
        since = one(down, "cosencfs_cos_seconds_since_success")
        assert age > 0
        time.sleep(1.0)
        later = scrape(port)
        assert one(later, "cosencfs_dirty_oldest_age_seconds") >= age + 1.0
        assert one(later, "cosencfs_cos_seconds_since_success") >= since + 1.0
        assert one(later, "cosencfs_dirty_files") == 1

        restarted = start_server(root, port=server_port)
        sync(m)
        back = scrape(port)
        assert one(back, "cosencfs_dirty_oldest_age_seconds") == 0
        assert one(back, "cosencfs_dirty_files") == 0
        assert one(back, "cosencfs_uploads_failing") == 0
        assert one(back, "cosencfs_cos_up") == 1
        assert one(back, "cosencfs_cos_seconds_since_success") < since
        # Refused connections: attempts that failed, some retried, as the daemon counted them.
        store = daemon_stats(m)["store"]
        failures: dict[str, int] = store["failures"]  # type: ignore[assignment]
        assert dict(by_label(back, "cosencfs_requests_total", "operation")) == store["requests"]
        outcomes = by_label(back, "cosencfs_requests_total", "outcome")
        assert outcomes["retried"] >= 1
        assert outcomes["failed"] >= 1
        assert outcomes["retried"] + outcomes["failed"] == sum(failures.values())
        assert m.umount() == 0
    finally:
        m.cleanup()
        if restarted is not None:
            restarted.stop()
