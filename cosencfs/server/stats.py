"""Statistics of the local COS server: requests by operation, bytes, connections, round trips."""

from __future__ import annotations

import threading
from collections import Counter


class Stats:
    """Request counts by operation name, body byte counts, network counters (thread-safe).

    The network counters are what the latency model (``latency.py``)
    charged: COS connections (plain or TLS) and round trips by kind, with
    the delay charged for them.  Admin calls are in none of them.  The
    connection counts are also kept since start (``lifetime``, never
    reset), so a benchmark can tell afterwards whether a client ever
    connected without TLS.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._bytes_in = 0
        self._bytes_out = 0
        self._net: Counter[str] = Counter()
        self._round_trips: Counter[str] = Counter()
        self._charged_ms = 0.0
        self._lifetime: Counter[str] = Counter()

    def count(self, op: str) -> None:
        with self._lock:
            self._counts[op] += 1

    def add_in(self, n: int) -> None:
        if n:
            with self._lock:
                self._bytes_in += n

    def add_out(self, n: int) -> None:
        if n:
            with self._lock:
                self._bytes_out += n

    def add_connection(self, *, tls: bool) -> None:
        with self._lock:
            self._net["connections"] += 1
            self._net["tls_connections" if tls else "plain_connections"] += 1
            self._lifetime["connections"] += 1
            self._lifetime["tls_connections" if tls else "plain_connections"] += 1

    def add_tls_failure(self) -> None:
        """A TLS handshake that failed (a plain-HTTP client, an untrusted certificate)."""
        with self._lock:
            self._net["tls_failures"] += 1
            self._lifetime["tls_failures"] += 1

    def add_round_trips(self, kind: str, n: int, ms: float) -> None:
        with self._lock:
            self._round_trips[kind] += n
            self._charged_ms += ms

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            net: dict[str, object] = {
                "connections": self._net["connections"],
                "plain_connections": self._net["plain_connections"],
                "tls_connections": self._net["tls_connections"],
                "tls_failures": self._net["tls_failures"],
                "round_trips": dict(self._round_trips),
                "total_round_trips": sum(self._round_trips.values()),
                "charged_ms": round(self._charged_ms, 3),
                "lifetime": {
                    k: self._lifetime[k]
                    for k in ("connections", "plain_connections", "tls_connections", "tls_failures")
                },
            }
            return {
                "requests": dict(self._counts),
                "total": sum(self._counts.values()),
                "bytes_in": self._bytes_in,
                "bytes_out": self._bytes_out,
                "network": net,
            }

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._bytes_in = 0
            self._bytes_out = 0
            self._net.clear()
            self._round_trips.clear()
            self._charged_ms = 0.0
