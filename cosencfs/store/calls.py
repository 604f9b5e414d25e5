"""One store call: attempts until an answer, a permanent error, the attempt budget or the deadline.

Every attempt is counted (COS bills failed requests too), and whatever a
path raises is turned into the project's errors here: ``TransientError``
is retried with backoff (``cosencfs.store.retry``), anything else is raised
at once.
"""

from __future__ import annotations

import http.client
import logging
import time
from typing import TypeVar

import requests
import trio
import urllib3.exceptions
from qcloud_cos.cos_exception import CosClientError, CosServiceError

from cosencfs.errors import InvalidRequestError, TransientError
from cosencfs.store.cosops import Operation
from cosencfs.store.cosproto import BadAnswer, service_error, status_error
from cosencfs.store.counters import RequestCounters
from cosencfs.store.fasthttp import HttpStatusError
from cosencfs.store.paths import CosPaths
from cosencfs.store.retry import RetryPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
)


class Caller:
    """Runs operations on ``paths`` under ``policy``, counting into ``counters``."""

    def __init__(self, paths: CosPaths, counters: RequestCounters, policy: RetryPolicy) -> None:
        self._paths = paths
        self._counters = counters
        self._policy = policy

    async def __call__(self, op: Operation[T]) -> T:
        """The result of ``op``, retrying transient failures."""
        name, key, policy = op.name, op.key, self._policy
        started = trio.current_time()
        # The whole call, retries included, ends by this time: an unreachable
        # or hanging server gives an error after a known delay, never a hang.
        # Bodies get extra time at a pessimistic 256 KiB/s.
        deadline = started + policy.deadline + op.up / (256 * 1024)
        attempt = 0
        while True:
            attempt += 1
            self._counters.request(name, up=op.up)
            t0 = time.monotonic()
            try:
                with trio.move_on_at(deadline) as scope:
                    result = await self._paths.attempt(op)
                if scope.cancelled_caught:
                    self._counters.failure(name)
                    self._counters.answered(name, time.monotonic() - t0, reached=False)
                    raise TransientError(
                        f"no answer within {deadline - started:.0f} s", op=name, key=key
                    )
            except CosServiceError as exc:
                self._counters.failure(name)
                err = service_error(name, key, exc)
            except HttpStatusError as exc:
                self._counters.failure(name)
                err = status_error(name, key, exc.status, exc.code, exc.message, exc.request_id)
            except CosClientError as exc:
                self._counters.failure(name)
                cause = exc.__context__
                if not isinstance(cause, _CONNECTION_ERRORS):
                    raise InvalidRequestError(f"client error: {exc}", op=name, key=key) from exc
                err = TransientError(f"connection failed: {type(cause).__name__}", op=name, key=key)
            except _CONNECTION_ERRORS as exc:
                self._counters.failure(name)
                err = TransientError(f"connection failed: {type(exc).__name__}", op=name, key=key)
            except BadAnswer as exc:
                self._counters.failure(name)
                err = TransientError(str(exc), op=name, key=key)
            else:
                took = time.monotonic() - t0
                self._counters.answered(name, took, reached=True)
                log.debug("%s %r ok in %.1f ms", name, key, took * 1000)
                return result
            # A 404 or 403 is COS answering; a timeout, reset or 5xx is not.
            transient = isinstance(err, TransientError)
            self._counters.answered(name, time.monotonic() - t0, reached=not transient)
            if not transient:
                raise err
            delay = policy.delay(attempt)
            elapsed = trio.current_time() - started
            if attempt >= policy.max_attempts or started + elapsed + delay > deadline:
                log.warning(
                    "%s %r failed after %d attempts in %.1f s: %s",
                    name,
                    key,
                    attempt,
                    elapsed,
                    err,
                )
                raise err
            log.debug(
                "%s %r attempt %d failed (%s); retrying in %.2f s", name, key, attempt, err, delay
            )
            self._counters.retry(name)
            await trio.sleep(delay)
