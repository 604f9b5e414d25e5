"""Request and byte counters of an object store.

COS bills every request (failed ones too) per 10,000, so the counters count
each HTTP attempt, retries included, by operation.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class CounterSnapshot:
    requests: dict[str, int]
    failures: dict[str, int]
    retries: int
    bytes_up: int
    bytes_down: int

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def minus(self, earlier: CounterSnapshot) -> CounterSnapshot:
        """What happened between ``earlier`` and this snapshot."""
        req = Counter(self.requests)
        req.subtract(earlier.requests)
        fail = Counter(self.failures)
        fail.subtract(earlier.failures)
        return CounterSnapshot(
            requests={k: v for k, v in req.items() if v},
            failures={k: v for k, v in fail.items() if v},
            retries=self.retries - earlier.retries,
            bytes_up=self.bytes_up - earlier.bytes_up,
            bytes_down=self.bytes_down - earlier.bytes_down,
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": dict(sorted(self.requests.items())),
            "total_requests": self.total_requests,
            "failures": dict(sorted(self.failures.items())),
            "retries": self.retries,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
        }


@dataclass(slots=True)
class RequestCounters:
    """Thread-safe: requests are made from worker threads."""

    _requests: Counter[str] = field(default_factory=Counter)
    _failures: Counter[str] = field(default_factory=Counter)
    _retries: int = 0
    _bytes_up: int = 0
    _bytes_down: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, op: str, *, up: int = 0, down: int = 0) -> None:
        with self._lock:
            self._requests[op] += 1
            self._bytes_up += up
            self._bytes_down += down

    def failure(self, op: str) -> None:
        with self._lock:
            self._failures[op] += 1

    def retry(self) -> None:
        with self._lock:
            self._retries += 1

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
            )
