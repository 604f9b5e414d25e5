"""Request statistics of the local COS server: counts by operation, bytes in and out."""

from __future__ import annotations

import threading
from collections import Counter


class Stats:
    """Request counts by operation name plus body byte counts (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._bytes_in = 0
        self._bytes_out = 0

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

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "requests": dict(self._counts),
                "total": sum(self._counts.values()),
                "bytes_in": self._bytes_in,
                "bytes_out": self._bytes_out,
            }

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._bytes_in = 0
            self._bytes_out = 0
