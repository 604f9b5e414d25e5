"""One store call: attempts until an answer, a permanent error, the attempt budget or the deadline.

Each attempt signs the operation's request (``wire.Signer``), sends it
(``transport.Transport``) and maps the answer.  Every attempt is counted
(COS bills failed requests too), including a request resent on a fresh
connection after the server closed an idle one.  Whatever fails is turned
into the project's errors here: ``TransientError`` is retried with backoff
(``cosencfs.store.retry``), anything else is raised at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import trio

from cosencfs.errors import InvalidRequestError, TransientError
from cosencfs.store.base import body_length
from cosencfs.store.cosops import Operation
from cosencfs.store.cosproto import BadAnswer, status_error
from cosencfs.store.counters import RequestCounters
from cosencfs.store.retry import RetryPolicy
from cosencfs.store.transport import CertificateError, Transport, TransportError
from cosencfs.store.wire import HttpStatusError, Signer

log = logging.getLogger(__name__)
T = TypeVar("T")


class Caller:
    """Runs operations over ``transport`` under ``policy``, counting into ``counters``."""

    def __init__(
        self,
        signer: Signer,
        transport: Transport,
        counters: RequestCounters,
        policy: RetryPolicy,
    ) -> None:
        self._signer = signer
        self._transport = transport
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
                    result = await self._attempt(op)
                if scope.cancelled_caught:
                    self._counters.failure(name)
                    self._counters.answered(name, time.monotonic() - t0, reached=False)
                    raise TransientError(
                        f"no answer within {deadline - started:.0f} s", op=name, key=key
                    )
            except HttpStatusError as exc:
                self._counters.failure(name)
                err = status_error(name, key, exc.status, exc.code, exc.message, exc.request_id)
            except CertificateError as exc:
                self._counters.failure(name)
                raise InvalidRequestError(str(exc), op=name, key=key) from None
            except TransportError as exc:
                self._counters.failure(name)
                err = TransientError(f"connection failed: {exc}", op=name, key=key)
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

    async def _attempt(self, op: Operation[T]) -> T:
        """Send ``op`` once; failures are raised as the transport reports them."""
        http = op.http
        length = 0 if http.body is None else body_length(http.body)
        target, headers = self._signer.prepare(
            http.method, http.key, http.headers, http.params, length
        )
        answer = await self._transport.request(
            http.method,
            target,
            headers,
            http.body,
            on_resend=self._resent(op.name),
            into=http.into,
        )
        if op.counts_down:
            self._counters.add_down(len(answer.body))
        return http.parse(answer)

    def _resent(self, name: str) -> Callable[[], None]:
        """Count the failed first attempt of a request resent on a fresh connection."""

        def count() -> None:
            self._counters.failure(name)
            self._counters.request(name)

        return count
