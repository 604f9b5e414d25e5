"""Request and byte counters of an object store.

COS bills every request (failed ones too) per 10,000, so the counters count
each HTTP attempt, retries included, by operation.  They also keep what the
Prometheus endpoint (``cosencfs.mount.metrics``) shows beyond counts: how long
attempts took and whether the last one reached COS.  Connections are counted
too (each costs a round trip, over https one more and a handshake's CPU at
both ends): made, with a full TLS handshake, with a resumed TLS session.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

#: Upper bounds (seconds) of the request latency histogram's buckets; one more
#: bucket holds what took longer.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(slots=True)
class CounterSnapshot:
    requests: dict[str, int]
    failures: dict[str, int]
    retries: int
    bytes_up: int
    bytes_down: int
    #: Failed attempts after which the call tried again, by operation (a part of failures).
    retried: dict[str, int] = field(default_factory=dict)
    #: Connections made: "opened" (all), "tls_full" and "tls_resumed" handshakes.
    connections: dict[str, int] = field(default_factory=dict)

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def minus(self, earlier: CounterSnapshot) -> CounterSnapshot:
        """What happened between ``earlier`` and this snapshot."""
        req = Counter(self.requests)
        req.subtract(earlier.requests)
        fail = Counter(self.failures)
        fail.subtract(earlier.failures)
        again = Counter(self.retried)
        again.subtract(earlier.retried)
        conns = Counter(self.connections)
        conns.subtract(earlier.connections)
        return CounterSnapshot(
            requests={k: v for k, v in req.items() if v},
            failures={k: v for k, v in fail.items() if v},
            retries=self.retries - earlier.retries,
            bytes_up=self.bytes_up - earlier.bytes_up,
            bytes_down=self.bytes_down - earlier.bytes_down,
            retried={k: v for k, v in again.items() if v},
            connections={k: v for k, v in conns.items() if v},
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": dict(sorted(self.requests.items())),
            "total_requests": self.total_requests,
            "failures": dict(sorted(self.failures.items())),
            "retries": self.retries,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "connections": dict(sorted(self.connections.items())),
        }


@dataclass(slots=True)
class Latency:
    """One operation's attempts by duration: counts per ``LATENCY_BUCKETS`` bucket
    (not cumulative; the last one is past the largest bound) and their sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total_seconds: float = 0.0


@dataclass(slots=True)
class Answers:
    """How attempts ended: their durations by operation, whether COS answered the
    last one and when it last did (no probes: only the requests the mount makes)."""

    #: None until the first attempt ends.
    last_reached: bool | None
    #: ``time.time()`` and ``time.monotonic()`` of the last answer; None before one.
    last_success_wall: float | None
    last_success_mono: float | None
    latency: dict[str, Latency]


@dataclass(slots=True)
class RequestCounters:
    """Thread-safe: requests are made from worker threads."""

    _requests: Counter[str] = field(default_factory=Counter)
    _failures: Counter[str] = field(default_factory=Counter)
    _retried: Counter[str] = field(default_factory=Counter)
    _connections: Counter[str] = field(default_factory=Counter)
    _retries: int = 0
    _bytes_up: int = 0
    _bytes_down: int = 0
    _latency: dict[str, Latency] = field(default_factory=dict)
    _last_reached: bool | None = None
    _success_wall: float | None = None
    _success_mono: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, op: str, *, up: int = 0, down: int = 0) -> None:
        with self._lock:
            self._requests[op] += 1
            self._bytes_up += up
            self._bytes_down += down

    def failure(self, op: str) -> None:
        with self._lock:
            self._failures[op] += 1

    def retry(self, op: str = "") -> None:
        """The failed attempt of ``op`` just counted is followed by another one."""
        with self._lock:
            self._retries += 1
            if op:
                self._retried[op] += 1

    def connected(self, *, tls: bool, resumed: bool) -> None:
        """A connection was made (``tls``: with a handshake, ``resumed`` or full)."""
        with self._lock:
            self._connections["opened"] += 1
            if tls:
                self._connections["tls_resumed" if resumed else "tls_full"] += 1

    def answered(self, op: str, seconds: float, *, reached: bool) -> None:
        """An attempt of ``op`` ended after ``seconds``; ``reached``: COS gave an
        answer that stands (a result, or an error such as 404 or 403), not a
        timeout, a broken connection or a server error."""
        with self._lock:
            lat = self._latency.get(op)
            if lat is None:
                lat = self._latency[op] = Latency()
            lat.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            lat.total_seconds += seconds
            self._last_reached = reached
            if reached:
                self._success_wall, self._success_mono = time.time(), time.monotonic()

    def answers(self) -> Answers:
        with self._lock:
            return Answers(
                last_reached=self._last_reached,
                last_success_wall=self._success_wall,
                last_success_mono=self._success_mono,
                latency={
                    op: Latency(list(v.counts), v.total_seconds) for op, v in self._latency.items()
                },
            )

    def add_down(self, n: int) -> None:
        with self._lock:
            self._bytes_down += n

    def snapshot(self) -> CounterSnapshot:
        with self._lock:
            return CounterSnapshot(
                requests=dict(self._requests),
                failures=dict(self._failures),
                retries=self._retries,
                bytes_up=self._bytes_up,
                bytes_down=self._bytes_down,
                retried=dict(self._retried),
                connections=dict(self._connections),
            )
