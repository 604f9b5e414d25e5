"""Fault injection and simulated latency, shared by the local COS server and MemoryStore.

One model of faults for both, so a test on the in-memory store sees what one
over HTTP would (issue 13). Imports nothing of the project.
"""

from __future__ import annotations

import random
import threading
from enum import Enum


class FaultKind(Enum):
    INTERNAL_ERROR = "500 InternalError"
    SLOW_DOWN = "503 SlowDown"
    RESET = "connection reset"
    #: 200 with an <Error> body; real COS does this to CopyObject.
    ERROR_200 = "200 with an Error body"


_COMMON = (FaultKind.INTERNAL_ERROR, FaultKind.SLOW_DOWN, FaultKind.RESET)
_COPY = (*_COMMON, FaultKind.ERROR_200)


class FaultInjector:
    """Decides, per request, whether and how it fails; deterministic for a given seed."""

    def __init__(self, rate: float = 0.0, latency_ms: int = 0, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self.rate = 0.0
        self.latency_ms = 0
        self.set(rate, latency_ms)

    def set(self, rate: float, latency_ms: int = 0) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate must be within [0, 1], not {rate}")
        if latency_ms < 0:
            raise ValueError(f"latency must be >= 0 ms, not {latency_ms}")
        with self._lock:
            self.rate = rate
            self.latency_ms = latency_ms

    def charge_latency(self, stopping: threading.Event) -> None:
        """Delay one request by the configured latency (cut short by ``stopping``).

        The one place simulated network latency is charged: a model that
        charges each round trip (TCP connect, TLS handshake, request) would
        grow from here.
        """
        latency = self.latency_ms
        if latency:
            stopping.wait(latency / 1000)

    def pick(self, is_copy: bool) -> FaultKind | None:
        with self._lock:
            if self.rate <= 0.0 or self._random.random() >= self.rate:
                return None
            return self._random.choice(_COPY if is_copy else _COMMON)
