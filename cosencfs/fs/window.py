"""How many uploads run at once: more while latency, not bandwidth or CPU, is the limit.

Small files go up one PUT each, so at 10 ms a round trip a fixed handful of
uploads in flight caps creation at a few hundred files a second however
idle the rest is.  ``UploadWindow`` sizes that number the way TCP Vegas
sizes a congestion window: it remembers the fastest PUT seen lately (the
``base`` latency: the round trip plus the work of one request), and after
each round of ``limit`` PUTs compares the round's mean latency with it.
``limit * (1 - base / mean)`` estimates how many of the uploads in flight
were only queueing (for bandwidth, for the CPU, for the server); while
that is small the window grows (doubling at first, then by one), when it
is large it shrinks by one.  It never leaves ``[floor, bound]``, and the
bound is the connection pool (``network.concurrency``): an upload never
waits for a connection another upload holds.  A round in which fewer
uploads were waiting than the window allowed says nothing about a larger
window: the window only grows when it was full.  It starts small, so that
the first PUTs of a burst show the latency of one request alone (a base
measured with many in flight would hide the queueing it is there to see);
doubling, it reaches 16 after 14 PUTs.

Only single PUTs are measured; multipart parts have their own limiter
(``Uploader.part_limiter``) and their latency is bandwidth's.
"""

from __future__ import annotations

import trio

#: Below this many queued requests (Vegas' alpha and beta) the window grows,
#: above the second it shrinks; in between it stays.
GROW_BELOW = 2.0
SHRINK_ABOVE = 4.0
#: The base latency is the minimum over the last two epochs of this many
#: samples, so it can rise again when the network got slower for good.
EPOCH = 256


class UploadWindow:
    """The uploads allowed in flight at once (``limiter``), adapted by ``observe``."""

    def __init__(self, bound: int, *, start: int = 2, floor: int = 2) -> None:
        if bound < 1:
            raise ValueError(f"upload window bound must be at least 1, not {bound}")
        self.bound = bound
        self.floor = min(floor, bound)
        self.limiter = trio.CapacityLimiter(max(self.floor, min(start, bound)))
        #: The most uploads in flight at once so far (stats and tests).
        self.peak = 0
        self._in_flight = 0
        self._slow_start = True
        self._base = float("inf")
        self._epoch_min = float("inf")
        self._prev_epoch_min = float("inf")
        self._epoch_n = 0
        self._round_sum = 0.0
        self._round_n = 0
        self._round_full = False

    @property
    def limit(self) -> int:
        return int(self.limiter.total_tokens)

    def started(self) -> None:
        """A PUT the window counts went on the wire."""
        self._in_flight += 1
        self.peak = max(self.peak, self._in_flight)
        # Full: every slot taken, or uploads waiting for one.
        if self._in_flight >= self.limit or self.limiter.statistics().tasks_waiting:
            self._round_full = True

    def observe(self, seconds: float) -> None:
        """A PUT the window counts finished after ``seconds`` (failed ones too)."""
        self._in_flight = max(0, self._in_flight - 1)
        self._epoch_min = min(self._epoch_min, seconds)
        self._epoch_n += 1
        if self._epoch_n >= EPOCH:
            self._prev_epoch_min, self._epoch_min, self._epoch_n = self._epoch_min, seconds, 0
        self._base = min(self._epoch_min, self._prev_epoch_min)
        self._round_sum += seconds
        self._round_n += 1
        if self._round_n < self.limit:
            return
        mean = self._round_sum / self._round_n
        full = self._round_full
        self._round_sum, self._round_n, self._round_full = 0.0, 0, False
        queued = self.limit * (1.0 - self._base / mean) if mean > 0 else 0.0
        if queued > SHRINK_ABOVE:
            self._slow_start = False
            self._set(self.limit - 1)
        elif queued < GROW_BELOW and full:
            self._set(self.limit * 2 if self._slow_start else self.limit + 1)

    def _set(self, n: int) -> None:
        n = max(self.floor, min(self.bound, n))
        if n != self.limit:
            # Lowering below what is borrowed is allowed: no new upload starts
            # until enough have finished.
            self.limiter.total_tokens = n
