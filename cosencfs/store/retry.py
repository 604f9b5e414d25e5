"""Retry policy for object-store requests: exponential backoff with full jitter.

COS asks clients to back off on 5xx and ``SlowDown``; connection failures and
timeouts are retried the same way.  The policy bounds both the number of
attempts and the total time, so a foreground request (a read, a listing)
fails with ``TransientError`` after a known delay instead of hanging.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: COS error codes worth another attempt, whatever the HTTP status.
RETRYABLE_CODES = frozenset(
    {
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "TooManyRequests",
        "ServerBusy",
    }
)
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(slots=True, frozen=True)
class RetryPolicy:
    """``max_attempts`` tries in all, giving up early once ``deadline`` seconds
    have passed since the first attempt."""

    max_attempts: int = 10
    deadline: float = 30.0
    base_delay: float = 0.1
    max_delay: float = 5.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Sleep before attempt number ``attempt + 1`` (``attempt`` >= 1): full jitter
        over an exponentially growing cap, so many clients do not retry in step."""
        cap = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return (rng or random).uniform(cap / 2, cap)


def is_retryable(status: int, code: str) -> bool:
    return status in RETRYABLE_STATUS or code in RETRYABLE_CODES
