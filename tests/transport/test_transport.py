"""The one transport (``cosencfs.store.transport``) over http and https.

Against the local COS server: bodies by Content-Length in both directions,
keep-alive reuse, the pool bound, certificates.  Against a scripted server:
chunked and close-delimited answers, idle connections the server closed,
truncated bodies, answers that never come.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trio
import trio.testing

import cosencfs.store.transport as transport_module
from cosencfs.errors import ConfigError, InvalidRequestError, TransientError
from cosencfs.server import LocalCosServer
from cosencfs.server.tls import ensure_self_signed
from cosencfs.store.base import FileRange
from cosencfs.store.retry import RetryPolicy
from cosencfs.store.tlsstream import TlsStream
from cosencfs.store.transport import CertificateError, Transport, TransportError
from cosencfs.store.wire import Endpoint, HttpStatusError
from tests.transport._raw import Script, ok
from tests.transport.conftest import StoreFactory

MIB = 1024 * 1024


def network(server: LocalCosServer) -> dict[str, int]:
    net = server.snapshot()["network"]
    if not isinstance(net, dict):
        raise TypeError(net)
    return {k: v for k, v in net.items() if isinstance(v, int)}


def transport_to(script: Script, ca_file: str | None, **kw: float) -> Transport:
    url = urlsplit(script.url)
    endpoint = Endpoint(url.scheme, url.hostname or "", url.port or 0)
    return Transport(
        endpoint,
        connections=int(kw.get("connections", 4)),
        timeout=kw.get("timeout", 5.0),
        ca_file=ca_file,
    )


GET: tuple[str, bytes, list[tuple[bytes, bytes]]] = ("GET", b"/k", [(b"Host", b"x")])

# ---------------------------------------------------------------- the local server


async def test_content_length_bodies_on_one_kept_alive_connection(
    local: LocalCosServer, make_store: StoreFactory, scheme: str, tmp_path: Path
) -> None:
    store = make_store(local.url)
    sizes = [0, 1, 4096, MIB, MIB + 3, 3 * MIB + 5]
    bodies = {f"o/{n}": os.urandom(n) for n in sizes}
    for key, body in bodies.items():
        await store.put(key, body, {"n": key})
    big = tmp_path / "big"
    big.write_bytes(os.urandom(5 * MIB))
    # A cache-file range: read in pieces in a thread, sent piece by piece.
    await store.put("o/range", FileRange(str(big), 7, 4 * MIB + 1), {})
    for key, body in bodies.items():
        assert await store.get(key) == body
        assert (await store.head(key)).size == len(body)
    assert await store.get("o/range") == big.read_bytes()[7 : 7 + 4 * MIB + 1]
    assert await store.get("o/range", 100, 200) == big.read_bytes()[107:207]
    # Requests one after the other: one connection for all of them.
    assert store.transport.opened == 1
    net = network(local)
    assert net["connections"] == 1
    assert net[f"{'tls' if scheme == 'https' else 'plain'}_connections"] == 1
    spent = store.counters.snapshot()
    assert spent.failures == {}
    assert spent.total_requests == len(sizes) * 3 + 3


async def test_the_pool_is_bounded_by_the_concurrency(
    local: LocalCosServer, make_store: StoreFactory
) -> None:
    store = make_store(local.url, concurrency=3)
    await store.put("k", b"x", {})
    local.set_faults(0.0, latency_ms=50)
    most = 0
    real = store.transport._connect

    async def watched() -> transport_module._Conn:
        nonlocal most
        conn = await real()
        most = max(most, store.transport.open_now)
        return conn

    store.transport._connect = watched  # type: ignore[method-assign]
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(store.head, "k")
    finally:
        local.set_faults(0.0)
    assert most == 3
    assert store.transport.opened == 3
    assert network(local)["connections"] == 3
    assert store.counters.snapshot().requests == {"PutObject": 1, "HeadObject": 20}


async def test_every_connection_is_counted_and_new_tls_ones_resume_a_session(
    local: LocalCosServer, make_store: StoreFactory, scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connections are counted in the store's counters (``cosencfs stats``);
    over https the first makes a full handshake and the later ones resume
    its session: no certificate sent, signed or checked again."""
    store = make_store(local.url)
    await store.put("k", b"x", {})
    # Every request finds the idle connection too old: a new one each time.
    monkeypatch.setattr(transport_module, "MAX_IDLE", -1.0)
    for _ in range(3):
        await store.head("k")
    conns = store.counters.snapshot().connections
    assert store.transport.opened == 4
    assert network(local)["connections"] == 4
    if scheme == "http":
        assert conns == {"opened": 4}
        assert store.transport.tls is None
        return
    assert conns == {"opened": 4, "tls_full": 1, "tls_resumed": 3}
    tls = store.transport.tls
    assert tls is not None
    assert (tls.handshakes, tls.resumed) == (4, 3)
    assert store.counters.snapshot().minus(store.counters.snapshot()).connections == {}


@pytest.mark.parametrize("scheme", ["https"])
async def test_a_connection_s_session_is_read_once_not_per_request(
    local: LocalCosServer, make_store: StoreFactory, scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading ``SSLObject.session`` copies it through DER (certificates too):
    done after every exchange it doubled the CPU of a HEAD over https."""
    reads = 0

    def counted(stream: TlsStream) -> ssl.SSLSession | None:
        nonlocal reads
        reads += 1
        return stream._tls.session

    monkeypatch.setattr(TlsStream, "session", property(counted))
    store = make_store(local.url)
    for _ in range(10):
        await store.put("k", b"x", {})
    assert store.transport.opened == 1
    assert reads == 1


@pytest.mark.parametrize("scheme", ["https"])
async def test_parallel_connections_made_before_any_ticket_make_full_handshakes(
    local: LocalCosServer, make_store: StoreFactory, scheme: str
) -> None:
    """A session is offered only once a connection finished an exchange (a TLS
    1.3 ticket comes after the handshake): a burst at start makes full ones."""
    store = make_store(local.url, concurrency=3)
    await store.put("k", b"x", {})
    local.set_faults(0.0, latency_ms=50)
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(store.head, "k")
    finally:
        local.set_faults(0.0)
    conns = store.counters.snapshot().connections
    # The first connection was idle in the pool for the burst; two more were
    # made, both resuming its session (its ticket came with its first answer).
    assert conns == {"opened": 3, "tls_full": 1, "tls_resumed": 2}


async def test_idle_connections_past_their_age_are_closed(
    local: LocalCosServer, make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(local.url)
    await store.put("k", b"x", {})
    monkeypatch.setattr(transport_module, "MAX_IDLE", -1.0)
    await store.head("k")
    await store.head("k")
    # Every request found the idle connection too old: closed, a new one made.
    assert store.transport.opened == 3
    assert store.transport.open_now == 1
    assert store.counters.snapshot().failures == {}


@pytest.mark.parametrize("scheme", ["https"])  # (no certificate on plain http)
async def test_a_certificate_that_does_not_verify_is_refused(
    local: LocalCosServer, make_store: StoreFactory, scheme: str, tmp_path: Path
) -> None:
    other_ca = ensure_self_signed(tmp_path / "other").ca
    for ca in (str(other_ca), None):  # another CA; the system's trust store
        store = make_store(local.url, ca_file=ca)
        with pytest.raises(InvalidRequestError, match="does not verify"):
            await store.head("k")
        # Refused at once: one attempt, not retried.
        spent = store.counters.snapshot()
        assert (spent.requests, spent.failures, spent.retries) == (
            {"HeadObject": 1},
            {"HeadObject": 1},
            0,
        )
    # Nothing was sent: the handshake failed on our side.
    assert local.stats() == {}


@pytest.mark.parametrize("scheme", ["https"])
async def test_ssl_cert_file_is_the_default_trust_store(
    local: LocalCosServer,
    make_store: StoreFactory,
    scheme: str,
    ca_file: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if ca_file is None:
        raise AssertionError("an https test without a CA file")
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    store = make_store(local.url, ca_file=None)
    await store.put("k", b"x", {})
    assert await store.get("k") == b"x"


def test_a_missing_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CA file"):
        Transport(
            Endpoint("https", "127.0.0.1", 1),
            connections=1,
            timeout=1,
            ca_file=str(tmp_path / "none.pem"),
        )


def test_a_proxy_in_the_environment_is_named_in_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = Endpoint("https", "cos.example.com", 443)
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with caplog.at_level(logging.WARNING, logger="cosencfs.store.transport"):
        transport_module.warn_if_proxied(endpoint)
    assert "proxies are not supported" in caplog.text
    caplog.clear()
    monkeypatch.setenv("no_proxy", "example.com")
    with caplog.at_level(logging.WARNING, logger="cosencfs.store.transport"):
        transport_module.warn_if_proxied(endpoint)
    assert caplog.text == ""


# ---------------------------------------------------------------- the scripted server


async def test_chunked_close_delimited_and_length_answers(raw: Script, ca_file: str | None) -> None:
    t = transport_to(raw, ca_file)
    raw.replies = [
        (ok(b"hello", 'ETag: "e1"'), False),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nTrailer: x\r\n\r\n",
            False,
        ),
        (ok(b""), False),
        (b"HTTP/1.0 200 OK\r\nETag: x\r\n\r\nto the end", True),
        (ok(b"fresh"), False),
    ]
    try:
        first = await t.request(*GET)
        assert (first.status, first.body, first.headers["etag"]) == (200, b"hello", '"e1"')
        assert (await t.request(*GET)).body == b"abcdefg"
        assert (await t.request(*GET)).body == b""
        assert (await t.request(*GET)).body == b"to the end"
        assert (await t.request(*GET)).body == b"fresh"
    finally:
        t.close()
    # Kept alive across length and chunked answers; the close-delimited one
    # ended its connection.
    assert raw.connections == 2
    assert t.opened == 2


async def test_a_server_closed_idle_connection_is_not_reused(
    raw: Script, ca_file: str | None
) -> None:
    t = transport_to(raw, ca_file)
    raw.replies = [(ok(b"one"), False), (ok(b"two"), False)]
    resent: list[int] = []
    try:
        assert (await t.request(*GET)).body == b"one"
        raw.close_idle.set()
        await trio.testing.wait_all_tasks_blocked()
        assert raw.open_now == 0
        raw.close_idle = trio.Event()
        # Seen closed before the request goes out: a fresh connection, no resend.
        answer = await t.request(*GET, on_resend=lambda: resent.append(1))
        assert answer.body == b"two"
    finally:
        t.close()
    assert (raw.connections, t.opened, resent) == (2, 2, [])


async def test_a_reused_connection_closed_unanswered_is_resent_once_and_counted(
    raw: Script, make_store: StoreFactory
) -> None:
    store = make_store(raw.url)
    head = ok(b"", 'ETag: "e"', "Last-Modified: Sun, 06 Dec 2026 10:00:00 GMT")
    # The second request reaches the kept connection, which the server then
    # closes without an answer (it had timed out its side meanwhile).
    raw.replies = [(head, False), (b"", True), (head, False)]
    await store.head("a")
    info = await store.head("b")
    assert info.etag == "e"
    spent = store.counters.snapshot()
    assert spent.requests == {"HeadObject": 3}
    assert spent.failures == {"HeadObject": 1}
    assert spent.retries == 0
    assert raw.connections == 2


async def test_a_fresh_connection_closed_unanswered_is_not_resent(
    raw: Script, ca_file: str | None
) -> None:
    t = transport_to(raw, ca_file)
    raw.replies = [(b"", True), (ok(b"late"), False)]
    resent: list[int] = []
    try:
        with pytest.raises(TransportError, match="closed before an answer"):
            await t.request(*GET, on_resend=lambda: resent.append(1))
    finally:
        t.close()
    assert (resent, raw.connections, t.open_now) == ([], 1, 0)


async def test_a_truncated_body_is_an_error_and_the_connection_is_dropped(
    raw: Script, ca_file: str | None, make_store: StoreFactory
) -> None:
    t = transport_to(raw, ca_file)
    big = transport_module.DIRECT_BODY * 3
    raw.replies = [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50, True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort", True),
        # A large body (read into one buffer, not through h11) cut short.
        (f"HTTP/1.1 200 OK\r\nContent-Length: {big}\r\n\r\n".encode() + b"y" * 1000, True),
    ]
    try:
        for _ in range(3):
            with pytest.raises(TransportError, match="bad answer"):
                await t.request(*GET)
            assert t.open_now == 0
    finally:
        t.close()
    # Through the store: a transient failure, retried, every attempt counted.
    store = make_store(raw.url, retry=transport_retry())
    raw.replies = [(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345", True)] * 2
    with pytest.raises(TransientError, match="bad answer"):
        await store.get("k")
    spent = store.counters.snapshot()
    assert (spent.requests, spent.failures, spent.retries) == (
        {"GetObject": 2},
        {"GetObject": 2},
        1,
    )


async def test_an_answer_that_never_comes_times_out(
    raw: Script, ca_file: str | None, make_store: StoreFactory
) -> None:
    t = transport_to(raw, ca_file, timeout=0.3)
    raw.replies = [(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n123", False)]
    try:
        # Headers and part of the body, then nothing; then no answer at all.
        with pytest.raises(TransportError, match="no answer in time"):
            await t.request(*GET)
        with pytest.raises(TransportError, match="no answer in time"):
            await t.request(*GET)
    finally:
        t.close()
    assert t.open_now == 0
    store = make_store(raw.url, timeout=0.3, retry=transport_retry())
    with pytest.raises(TransientError, match="no answer in time"):
        await store.head("k")
    assert store.counters.snapshot().requests == {"HeadObject": 2}


async def test_large_bodies_keep_the_connection_unless_told_not_to(
    raw: Script, ca_file: str | None
) -> None:
    t = transport_to(raw, ca_file)
    big = os.urandom(transport_module.DIRECT_BODY * 5 + 3)
    raw.replies = [
        (ok(big), False),
        (ok(b"small after large"), False),
        (ok(big, "Connection: close"), False),
        (ok(big[:10]), False),
    ]
    try:
        assert (await t.request(*GET)).body == big
        assert (await t.request(*GET)).body == b"small after large"
        assert (await t.request(*GET)).body == big
        assert (await t.request(*GET)).body == big[:10]
    finally:
        t.close()
    # Kept alive after the first large body; "Connection: close" ended the second.
    assert (raw.connections, t.opened) == (2, 2)


async def test_error_answers_keep_the_connection(raw: Script, ca_file: str | None) -> None:
    t = transport_to(raw, ca_file)
    error = b"<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>"
    raw.replies = [
        (ok(error).replace(b"200 OK", b"404 Not Found"), False),
        (ok(b"there"), False),
    ]
    try:
        with pytest.raises(HttpStatusError) as info:
            await t.request(*GET)
        assert (info.value.status, info.value.code, info.value.message) == (
            404,
            "NoSuchKey",
            "gone",
        )
        assert (await t.request(*GET)).body == b"there"
    finally:
        t.close()
    assert raw.connections == 1


def transport_retry() -> RetryPolicy:
    return RetryPolicy(max_attempts=2, deadline=10.0, base_delay=0.01)


def test_certificate_errors_are_transport_errors() -> None:
    assert issubclass(CertificateError, TransportError)


async def test_a_body_the_server_never_reads_times_out() -> None:
    """Sending must progress within the timeout too: a server that accepts and
    never reads fills the socket buffers, and the PUT fails instead of hanging."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    held: list[trio.SocketStream] = []

    async def accept_and_ignore() -> None:
        while True:
            held.append(await listener.accept())

    t = Transport(Endpoint("http", "127.0.0.1", port), connections=1, timeout=0.3)
    put = ("PUT", b"/k", [(b"Host", b"x"), (b"Content-Length", str(64 * MIB).encode())])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_and_ignore)
        try:
            with trio.fail_after(10), pytest.raises(TransportError, match="send timed out"):
                await t.request(*put, bytes(64 * MIB))
        finally:
            t.close()
            nursery.cancel_scope.cancel()
    for stream in held:
        await stream.aclose()
    await listener.aclose()
    assert t.open_now == 0
