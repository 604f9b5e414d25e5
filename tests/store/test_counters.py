"""RequestCounters beyond counts: attempt durations, retried attempts by operation, last answer."""

from __future__ import annotations

import pytest

from cosencfs.store.counters import LATENCY_BUCKETS, RequestCounters


def test_request_counters_time_attempts_and_remember_the_last_answer() -> None:
    c = RequestCounters()
    assert c.answers().last_reached is None
    c.request("PutObject")
    c.failure("PutObject")
    c.answered("PutObject", 0.003, reached=False)
    c.retry("PutObject")
    assert c.answers().last_success_wall is None
    c.request("PutObject")
    c.answered("PutObject", 99.0, reached=True)
    c.request("HeadObject")
    c.failure("HeadObject")
    c.answered("HeadObject", 0.2, reached=True)  # a 404 is an answer
    snap, answers = c.snapshot(), c.answers()
    assert snap.requests == {"PutObject": 2, "HeadObject": 1}
    assert snap.failures == {"PutObject": 1, "HeadObject": 1}
    assert (snap.retries, snap.retried) == (1, {"PutObject": 1})
    assert answers.last_reached is True
    assert answers.last_success_wall is not None
    put = answers.latency["PutObject"]
    assert put.counts[0] == 1  # <= 5 ms
    assert put.counts[len(LATENCY_BUCKETS)] == 1  # past the largest bound
    assert put.total_seconds == pytest.approx(99.003)
    assert sum(answers.latency["HeadObject"].counts) == 1
    assert snap.minus(snap).retried == {}
