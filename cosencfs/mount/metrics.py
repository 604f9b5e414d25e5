"""The Prometheus endpoint (``--metrics-addr``): the mount's own counters, read at scrape time.

Nothing is counted here. A scrape reads the counters the daemon keeps anyway
— the store's ``RequestCounters`` and what ``cosencfs stats`` shows
(``fs.stats.collect_stats``) — so what Prometheus sees equals what the daemon
and ``cosencfs stats`` say, by construction. No metric costs a request to COS:
reachability is the outcome of the last request the mount made anyway.

prometheus_client serves the text format from its own daemon thread
(``start_http_server``), with a registry of our own holding one collector.
That thread reads ``RequestCounters`` under its lock and asks the event loop
for everything else (``trio.from_thread.run_sync``): the inode table, the
write-back queue and the journal's SQLite connection belong to the loop's
thread and are read only there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from cosencfs import fuse_ops
from cosencfs.fs.stats import collect_stats
from cosencfs.store.counters import LATENCY_BUCKETS, Answers, CounterSnapshot

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from cosencfs.fs.core import Filesystem

log = logging.getLogger(__name__)

#: Labels of every metric: several mounts on one host told apart. Object
#: names are never labels (unbounded, and private).
TARGET_LABELS = ("bucket", "prefix", "mountpoint")


#: Error kinds exported from 0 on: an alert on increase() misses the first
#: error of a series that appears with it.
ALERTED_ERRORS = (
    "WrongKeyError",
    "RefusedError",
    "IntegrityError",
    "DamagedObjectError",
    "CacheIntegrityError",
)


class MountCollector(Collector):
    """One mount's metrics, gathered when Prometheus asks."""

    def __init__(
        self, fs: Filesystem, target: tuple[str, str, str], token: trio.lowlevel.TrioToken
    ) -> None:
        self._fs = fs
        self._target = list(target)
        self._token = token

    def collect(self) -> Iterator[Metric]:
        # Called in a prometheus_client server thread, never in the event loop.
        counters = self._fs.ctx.store.counters
        store, answers = counters.snapshot(), counters.answers()
        yield from self._requests(store, answers)
        try:
            stats, errors = trio.from_thread.run_sync(self._in_loop, trio_token=self._token)
        except trio.RunFinishedError:
            return  # the mount is ending: the store's counters are all there is
        yield from self._filesystem(stats, errors)

    def _in_loop(self) -> tuple[dict[str, Any], dict[str, int]]:
        return collect_stats(self._fs), dict(fuse_ops.ERRORS)

    def _family(self, kind: type[Any], name: str, doc: str, *labels: str) -> Any:
        return kind(name, doc, labels=[*TARGET_LABELS, *labels])

    def _one(self, kind: type[Any], name: str, doc: str, value: float) -> Metric:
        fam = self._family(kind, name, doc)
        fam.add_metric(self._target, value)
        metric: Metric = fam
        return metric

    def _requests(self, store: CounterSnapshot, answers: Answers) -> Iterator[Metric]:
        t = self._target
        req = self._family(
            CounterMetricFamily,
            "cosencfs_requests",
            "Requests to COS (each HTTP attempt, as COS bills them) by operation and outcome: "
            "ok, retried (failed, then tried again), failed (an error answer such as a 404, "
            "or a call's last failed attempt)",
            "operation",
            "outcome",
        )
        for op, n in sorted(store.requests.items()):
            failed = store.failures.get(op, 0)
            retried = store.retried.get(op, 0)
            req.add_metric([*t, op, "ok"], n - failed)
            req.add_metric([*t, op, "retried"], retried)
            req.add_metric([*t, op, "failed"], failed - retried)
        yield req
        hist = self._family(
            HistogramMetricFamily,
            "cosencfs_request_duration_seconds",
            "How long requests to COS took, by operation (attempts that ended in an "
            "answer, an error or a timeout)",
            "operation",
        )
        for op, lat in sorted(answers.latency.items()):
            buckets, running = [], 0
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), lat.counts, strict=True):
                running += n
                buckets.append(("+Inf" if bound == float("inf") else str(bound), running))
            hist.add_metric([*t, op], buckets, sum_value=lat.total_seconds)
        yield hist
        yield self._one(
            CounterMetricFamily,
            "cosencfs_sent_bytes",
            "Request body bytes sent to COS",
            store.bytes_up,
        )
        yield self._one(
            CounterMetricFamily,
            "cosencfs_received_bytes",
            "Answer body bytes received from COS",
            store.bytes_down,
        )
        # Before any attempt has ended the mount has just checked the bucket
        # (it would not run otherwise): up.
        up = answers.last_reached is not False
        yield self._one(
            GaugeMetricFamily,
            "cosencfs_cos_up",
            "1 if COS answered the mount's last request (an error such as 404 counts; "
            "a timeout, a broken connection or a 5xx does not), else 0",
            1.0 if up else 0.0,
        )
        if answers.last_success_wall is not None and answers.last_success_mono is not None:
            yield self._one(
                GaugeMetricFamily,
                "cosencfs_cos_last_success_timestamp_seconds",
                "Unix time of the last answer from COS",
                answers.last_success_wall,
            )
            yield self._one(
                GaugeMetricFamily,
                "cosencfs_cos_seconds_since_success",
                "Seconds since the last answer from COS (grows while the mount is idle too: "
                "no probe requests are made)",
                time.monotonic() - answers.last_success_mono,
            )

    def _filesystem(self, s: dict[str, Any], errors: dict[str, int]) -> Iterator[Metric]:
        cache, dirty, up = s["cache"], s["dirty"], s["uploads"]
        gauges = (
            ("cosencfs_cache_bytes", "Bytes of the local cache in use", cache["bytes"]),
            ("cosencfs_cache_limit_bytes", "The cache size limit (clean data)", cache["limit"]),
            ("cosencfs_dirty_files", "Files changed and not yet in COS", dirty["files"]),
            ("cosencfs_dirty_bytes", "Size of the files with data not yet in COS", dirty["bytes"]),
            (
                "cosencfs_dirty_oldest_age_seconds",
                "Age of the oldest change not yet in COS (0: everything is uploaded)",
                dirty["oldest_age"],
            ),
            (
                "cosencfs_journal_dirty_records",
                "Dirty files recorded in the cache journal (a crash keeps them)",
                dirty["journal_records"],
            ),
            ("cosencfs_upload_queue_length", "Files waiting for or in upload", up["queued"]),
            ("cosencfs_uploads_failing", "Files whose last upload failed", up["failing_now"]),
            ("cosencfs_deletes_pending", "Deletes not yet sent to COS", s["deletes"]["pending"]),
        )
        for name, doc, value in gauges:
            yield self._one(GaugeMetricFamily, name, doc, value)
        integrity = s["integrity"]
        counters = (
            ("cosencfs_cache_hits", "Reads served from the cache", cache["hits"]),
            ("cosencfs_cache_misses", "Reads that had to fetch from COS", cache["misses"]),
            (
                "cosencfs_cache_fetched_bytes",
                "Bytes fetched into the cache",
                cache["fetched_bytes"],
            ),
            ("cosencfs_uploads", "Background uploads that succeeded", up["done"]),
            ("cosencfs_uploads_failed", "Background uploads that failed", up["failed"]),
            ("cosencfs_deletes_failed", "Batched deletes that failed", s["deletes"]["failed"]),
            (
                "cosencfs_integrity_objects_verified",
                "Objects whose integrity tags verified",
                integrity["objects_verified"],
            ),
            (
                "cosencfs_integrity_objects_refused",
                "Objects refused: tags missing where required, or wrong",
                integrity["objects_refused"],
            ),
            (
                "cosencfs_integrity_attribute_failures",
                "Attribute tags that did not verify",
                integrity["attribute_failures"],
            ),
            (
                "cosencfs_integrity_chunk_failures",
                "64 KiB chunks whose tag did not verify",
                integrity["chunk_failures"],
            ),
        )
        for name, doc, value in counters:
            yield self._one(CounterMetricFamily, name, doc, value)
        fam = self._family(
            CounterMetricFamily,
            "cosencfs_errors",
            "File operations answered with an error, by its kind: WrongKeyError, "
            "RefusedError, IntegrityError, DamagedObjectError, TransientError, ...",
            "error",
        )
        for kind, n in sorted({**dict.fromkeys(ALERTED_ERRORS, 0), **errors}.items()):
            fam.add_metric([*self._target, kind], n)
        yield fam


def split_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` / ``[V6]:PORT`` as the settings normalized it -> (host, port)."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsServer:
    """The endpoint's HTTP server, in prometheus_client's daemon thread."""

    def __init__(self, httpd: WSGIServer) -> None:
        self._httpd = httpd

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    async def close(self) -> None:
        # shutdown() waits for serve_forever's next poll (up to 0.5 s): not in the loop.
        await trio.to_thread.run_sync(self._httpd.shutdown)
        self._httpd.server_close()


def start(fs: Filesystem, addr: str, target: tuple[str, str, str]) -> MetricsServer:
    """Serve ``fs``'s metrics on ``addr``; call in the event loop (it reads its token)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MountCollector(fs, target, trio.lowlevel.current_trio_token()))
    host, port = split_addr(addr)
    httpd, _thread = start_http_server(port, host, registry)
    server = MetricsServer(httpd)
    log.info("metrics on http://%s/metrics", f"{addr.rpartition(':')[0]}:{server.port}")
    return server
