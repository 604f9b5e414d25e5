"""Large bodies sent and received by one worker-thread job (``bodysend``, ``bodyrecv``).

Over http and https: the bytes arrive intact, one job per body; a body
cancelled, cut by the server or stalled mid-way leaves no connection that
could be reused half-written; the request counters stay exact.  Every test
counts jobs, connections and requests, none measures time.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

import cosencfs.store.bodyrecv as bodyrecv_module
import cosencfs.store.bodysend as bodysend_module
import cosencfs.store.transport as transport_module
from cosencfs.server import LocalCosServer
from cosencfs.store.base import FileRange
from cosencfs.store.transport import TransportError
from tests.transport._raw import Script, ok
from tests.transport.conftest import StoreFactory
from tests.transport.test_transport import GET, network, transport_to

MIB = 1024 * 1024
#: Larger than the loopback socket buffers of both ends together, so the
#: sender is still mid-body when the server stops reading or closes.
HUGE = 32 * MIB


def put_request(size: int) -> tuple[str, bytes, list[tuple[bytes, bytes]]]:
    return ("PUT", b"/k", [(b"Host", b"x"), (b"Content-Length", str(size).encode())])


async def test_large_put_and_get_arrive_intact(
    local: LocalCosServer, make_store: StoreFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Steps smaller than the bodies and not dividing them: the step loop's ends.
    monkeypatch.setattr(bodysend_module, "STEP", 100_003)
    store = make_store(local.url)
    t = store.transport
    small = os.urandom(transport_module.THREAD_BODY - 1)
    large = os.urandom(8 * MIB + 3)
    data = os.urandom(4 * MIB)
    cache = tmp_path / "cache"
    cache.write_bytes(data)
    await store.put("small", small, {})
    assert t.body_jobs == 0  # sent from the loop in one write
    await store.put("large", large, {"a": "1"})
    await store.put("range", FileRange(str(cache), 7, 3 * MIB + 5), {})
    await store.put("view", memoryview(large)[1 : 2 * MIB], {})
    assert t.body_jobs == 3
    assert t.body_sends >= 3
    jobs_before = t.receive_jobs
    assert await store.get("large") == large
    assert await store.get("range") == data[7 : 7 + 3 * MIB + 5]
    assert await store.get("view") == large[1 : 2 * MIB]
    assert await store.get("small") == small
    # Over https the three large answers came in by a thread job each (the
    # small one not); over plain http they are read in the loop.
    https = local.url.startswith("https")
    assert t.receive_jobs - jobs_before == (3 if https else 0)
    assert (t.receive_reads >= 3) is https
    # Each request after a thread's send reused the one connection.
    assert t.opened == 1
    assert network(local)["connections"] == 1
    spent = store.counters.snapshot()
    assert spent.requests == {"PutObject": 4, "GetObject": 4}
    assert spent.failures == {}
    assert spent.bytes_up == len(small) + len(large) + (3 * MIB + 5) + (2 * MIB - 1)


async def test_a_large_put_cancelled_mid_body_leaves_no_reusable_connection(
    raw: Script, ca_file: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = transport_to(raw, ca_file)
    raw.replies = [(ok(b"first"), False), (ok(b"after"), False)]
    raw.stall = MIB
    stuck = threading.Event()
    real_writable = bodysend_module._Job._writable

    def writable(job: bodysend_module._Job) -> None:
        stuck.set()  # the socket is full: the body is part-way out
        real_writable(job)

    ended: list[BaseException] = []
    done = threading.Event()
    real_run = bodysend_module._Job.run

    def run(job: bodysend_module._Job, head: bytes, body: object) -> int:
        try:
            return real_run(job, head, body)  # type: ignore[arg-type]
        except BaseException as exc:
            ended.append(exc)
            raise
        finally:
            done.set()

    monkeypatch.setattr(bodysend_module._Job, "_writable", writable)
    monkeypatch.setattr(bodysend_module._Job, "run", run)
    try:
        assert (await t.request(*GET)).body == b"first"
        async with trio.open_nursery() as nursery:

            async def put() -> None:
                await t.request(*put_request(HUGE), bytes(HUGE))

            nursery.start_soon(put)
            await trio.to_thread.run_sync(stuck.wait)
            await raw.abandoned.wait()  # and the server has read part of it
            nursery.cancel_scope.cancel()
        # Cancelled: the connection is gone from the pool, not back in it.
        assert (t.open_now, t.body_jobs) == (0, 1)
        # The abandoned thread ends too: the socket was shut down under it.
        await trio.to_thread.run_sync(done.wait)
        # ... at once, by the shutdown: not by its own send timeout.
        assert isinstance(ended[0], OSError)
        assert not isinstance(ended[0], TimeoutError)
        assert (await t.request(*GET)).body == b"after"
    finally:
        t.close()
    assert (raw.connections, t.opened, t.open_now) == (2, 2, 0)
    assert len(raw.partial) == 1
    assert len(raw.requests) == 2  # the two GETs; the PUT never completed


async def test_a_server_that_closes_a_fresh_connection_mid_body_is_an_error(
    raw: Script, ca_file: str | None
) -> None:
    t = transport_to(raw, ca_file)
    raw.cut = MIB
    resent: list[int] = []
    try:
        # A fresh connection: no resend (the server may be refusing the body).
        with pytest.raises(TransportError, match=r"send failed|closed before an answer"):
            await t.request(*put_request(HUGE), bytes(HUGE), on_resend=lambda: resent.append(1))
    finally:
        t.close()
    assert (resent, raw.connections, t.open_now, t.body_jobs) == ([], 1, 0, 1)
    assert len(raw.partial) == 1


async def test_a_reused_connection_closed_mid_body_is_resent_once_and_counted(
    raw: Script, make_store: StoreFactory
) -> None:
    store = make_store(raw.url)
    head = ok(b"", 'ETag: "e"', "Last-Modified: Sun, 06 Dec 2026 10:00:00 GMT")
    raw.replies = [(head, False), (head, False)]
    await store.head("a")
    raw.cut = MIB
    # The kept connection closes while the body goes out: sent once more,
    # whole, on a fresh connection (a body cut short stored nothing).
    assert await store.put("b", bytes(HUGE), {}) == "e"
    spent = store.counters.snapshot()
    assert spent.requests == {"HeadObject": 1, "PutObject": 2}
    assert spent.failures == {"PutObject": 1}
    assert spent.retries == 0
    assert (raw.connections, len(raw.partial), len(raw.requests)) == (2, 1, 2)
    assert store.transport.body_jobs == 2


async def test_a_large_send_that_stalls_times_out(raw: Script, ca_file: str | None) -> None:
    t = transport_to(raw, ca_file, timeout=0.3)
    raw.stall = MIB
    try:
        with trio.fail_after(20), pytest.raises(TransportError, match="send timed out"):
            await t.request(*put_request(HUGE), bytes(HUGE))
    finally:
        t.close()
    assert (t.open_now, t.body_jobs, raw.connections, len(raw.partial)) == (0, 1, 1, 1)


# ---------------------------------------------------------------- answers


def large_answer(size: int, sent: int) -> bytes:
    """The head of a ``size``-byte answer and the first ``sent`` bytes of its body."""
    return f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode() + b"z" * sent


async def test_a_large_answer_cut_short_is_an_error(raw: Script, ca_file: str | None) -> None:
    t = transport_to(raw, ca_file)
    size = 4 * transport_module.THREAD_BODY
    raw.replies = [(large_answer(size, size // 3), True), (ok(b"next"), False)]
    try:
        with pytest.raises(TransportError, match=f"body ended at {size // 3} of {size}"):
            await t.request(*GET)
        assert t.open_now == 0
        assert (await t.request(*GET)).body == b"next"
    finally:
        t.close()
    assert (t.receive_jobs, raw.connections) == (1 if ca_file else 0, 2)


async def test_a_large_answer_that_stalls_times_out(raw: Script, ca_file: str | None) -> None:
    t = transport_to(raw, ca_file, timeout=0.3)
    size = 4 * transport_module.THREAD_BODY
    raw.replies = [(large_answer(size, size // 2), False)]
    try:
        with trio.fail_after(20), pytest.raises(TransportError, match="no answer in time"):
            await t.request(*GET)
    finally:
        t.close()
    assert (t.open_now, t.receive_jobs) == (0, 1 if ca_file else 0)


# Over https only: plain http answers are read in the loop, by no thread job.
@pytest.mark.parametrize("scheme", ["https"])
async def test_a_large_answer_cancelled_mid_body_leaves_no_reusable_connection(
    raw: Script, ca_file: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if ca_file is None:
        raise AssertionError("an https test without a CA file")
    t = transport_to(raw, ca_file)
    size = 4 * transport_module.THREAD_BODY
    raw.replies = [(large_answer(size, size // 2), False), (ok(b"after"), False)]
    waiting = threading.Event()
    done = threading.Event()
    ended: list[object] = []
    real_wait = bodysend_module.wait_for  # what bodyrecv imported
    real_run = bodyrecv_module._Job.run

    def wait_for(fd: int, event: int, stall: float) -> None:
        waiting.set()  # the thread waits for the rest of the body
        real_wait(fd, event, stall)

    def run(job: bodyrecv_module._Job, view: memoryview) -> int:
        try:
            got = real_run(job, view)
            ended.append(got)
            return got
        except BaseException as exc:
            ended.append(exc)
            raise
        finally:
            done.set()

    monkeypatch.setattr(bodyrecv_module, "wait_for", wait_for)
    monkeypatch.setattr(bodyrecv_module._Job, "run", run)
    try:
        async with trio.open_nursery() as nursery:

            async def get() -> None:
                await t.request(*GET)

            nursery.start_soon(get)
            await trio.to_thread.run_sync(waiting.wait)
            nursery.cancel_scope.cancel()
        assert (t.open_now, t.receive_jobs) == (0, 1)
        # The abandoned thread ends at once: the socket was shut down under
        # it, so it read the end of the stream or failed to send a TLS alert
        # (not its own timeout).
        await trio.to_thread.run_sync(done.wait)
        assert len(ended) == 1
        assert isinstance(ended[0], int | OSError)
        assert not isinstance(ended[0], TimeoutError)
        assert (await t.request(*GET)).body == b"after"
    finally:
        t.close()
    assert (raw.connections, t.opened) == (2, 2)


async def test_a_send_cancelled_before_its_thread_starts_leaks_no_descriptor(
    raw: Script, ca_file: str | None
) -> None:
    t = transport_to(raw, ca_file)
    raw.replies = [(ok(b"first"), False), (ok(b"after"), False)]
    senders = bodysend_module.SENDERS
    holders: list[object] = []
    try:
        # Every sender's token held here, waited for: the limiter is the
        # process's, and a job an earlier test abandoned (a stalled send,
        # cancelled) keeps its token and its duplicate descriptor until its
        # own wait times out; the descriptors are counted below.
        with trio.fail_after(60):
            for _ in range(int(senders.total_tokens)):
                holder = object()
                await senders.acquire_on_behalf_of(holder)
                holders.append(holder)
        assert (await t.request(*GET)).body == b"first"
        fds = len(os.listdir("/proc/self/fd"))
        async with trio.open_nursery() as nursery:

            async def put() -> None:
                await t.request(*put_request(HUGE), bytes(HUGE))

            nursery.start_soon(put)
            # The PUT waits for a sender's token, with its duplicate made.
            await trio.testing.wait_all_tasks_blocked()
            assert senders.statistics().tasks_waiting == 1
            assert len(os.listdir("/proc/self/fd")) == fds + 1
            nursery.cancel_scope.cancel()
    finally:
        for holder in holders:
            senders.release_on_behalf_of(holder)
    try:
        # The connection and the duplicate are both gone; the pool goes on.
        assert len(os.listdir("/proc/self/fd")) == fds - 1
        assert (t.open_now, t.body_jobs) == (0, 1)
        assert (await t.request(*GET)).body == b"after"
    finally:
        t.close()
