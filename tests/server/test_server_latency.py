"""The latency model (``--rtt-ms``) and TLS of the local server: checked by counting, not timing.

Each test is a client that counts its own round trips (TCP connects, TLS
handshake round trips from the version and resumption it negotiated,
requests, ``100 Continue`` waits) and compares them with the round trips
the server charged.  That the charge is a real wait is checked on the
model with a recording stand-in for its clock, not with a stopwatch.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cosencfs.server import LocalCosServer
from cosencfs.server.admin import admin_request
from cosencfs.server.auth import cos_authorization
from cosencfs.server.latency import RoundTrip, RttModel
from cosencfs.server.stats import Stats
from cosencfs.server.tls import TlsFiles, ensure_self_signed
from tests.server._server_helpers import BUCKET, SECRET_ID, SECRET_KEY, VHOST

RTT_MS = 3.0


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return ensure_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def rtt_server(tmp_path: Path) -> Iterator[LocalCosServer]:
    with LocalCosServer(
        tmp_path / "cos", buckets=[BUCKET], secret_id=SECRET_ID, secret_key=SECRET_KEY,
        rtt_ms=RTT_MS,
    ) as srv:  # fmt: skip
        yield srv


@pytest.fixture
def tls_server(tmp_path: Path, tls_files: TlsFiles) -> Iterator[LocalCosServer]:
    with LocalCosServer(
        tmp_path / "cos", buckets=[BUCKET], secret_id=SECRET_ID, secret_key=SECRET_KEY,
        rtt_ms=RTT_MS, tls=tls_files,
    ) as srv:  # fmt: skip
        yield srv


def _headers(method: str, key: str, length: int | None = None) -> dict[str, str]:
    headers = {"Host": VHOST}
    if length is not None:
        headers["Content-Length"] = str(length)
    headers["Authorization"] = cos_authorization(
        SECRET_ID, SECRET_KEY, method=method, path="/" + key, headers=dict(headers)
    )
    return headers


def _put(conn: http.client.HTTPConnection, key: str, body: bytes) -> int:
    conn.request("PUT", "/" + key, body=body, headers=_headers("PUT", key, len(body)))
    resp = conn.getresponse()
    resp.read()
    return resp.status


def _network(server: LocalCosServer) -> dict[str, Any]:
    """The server's network counters, read through the admin endpoint (never counted)."""
    files = server.tls_files
    cafile = str(files.ca) if files is not None and files.ca is not None else None
    status, data = admin_request(
        server.url, "GET", "/_cosencfs/stats", secret_id=SECRET_ID, secret_key=SECRET_KEY,
        cafile=cafile,
    )  # fmt: skip
    assert status == 200, data
    network: dict[str, Any] = data["network"]
    return network


def _closed_connections_settle(server: LocalCosServer, connections: int) -> dict[str, Any]:
    """Counters once the server's threads have seen ``connections`` connections end.

    A connection without requests is counted when its thread ends, which is
    after the client's close returns: poll (bounded) for that, no timing asserted.
    """
    deadline = time.monotonic() + 30
    while True:
        net = _network(server)
        if net["connections"] >= connections or time.monotonic() > deadline:
            return net
        time.sleep(0.02)


def _client_context(ca: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


class RecordingEvent(threading.Event):
    """An Event whose waits are recorded (and not slept)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout if timeout is not None else -1.0)
        return False


# ----------------------------------------------------------------- the model


def test_a_charge_is_a_wait_of_one_rtt_per_round_trip() -> None:
    clock = RecordingEvent()
    stats = Stats()
    model = RttModel(10.0, stats, clock)
    model.charge(RoundTrip.REQUEST)
    model.charge(RoundTrip.TLS_HANDSHAKE, 2)
    model.charge(RoundTrip.CONNECT, 1, wait=False)  # counted, nobody waits
    assert clock.waits == [0.01, 0.02]
    net: Any = stats.snapshot()["network"]
    assert net["round_trips"] == {"request": 1, "tls_handshake": 2, "connect": 1}
    assert net["charged_ms"] == 40.0


def test_no_rtt_charges_nothing_but_still_counts() -> None:
    clock = RecordingEvent()
    stats = Stats()
    RttModel(0.0, stats, clock).charge(RoundTrip.REQUEST, 3)
    assert clock.waits == []
    net: Any = stats.snapshot()["network"]
    assert net["round_trips"] == {"request": 3}


def test_negative_rtt_is_refused() -> None:
    with pytest.raises(ValueError, match="RTT"):
        RttModel(-1.0, Stats())


# ------------------------------------------------------------- over plain TCP


def test_plain_http_charges_each_connect_and_each_request(rtt_server: LocalCosServer) -> None:
    mine = {"connect": 0, "request": 0}
    for c in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", rtt_server.port, timeout=30)
        conn.connect()
        mine["connect"] += 1
        for i in range(c + 1):  # keep-alive: 1, 2, 3 requests on the three connections
            assert _put(conn, f"k{c}-{i}", b"x" * 100) == 200
            mine["request"] += 1
        conn.close()
    net = _network(rtt_server)
    assert net["round_trips"] == mine
    assert net["connections"] == net["plain_connections"] == 3
    assert net["tls_connections"] == 0
    assert net["total_round_trips"] == 9
    assert net["charged_ms"] == pytest.approx(9 * RTT_MS)


def test_admin_calls_are_never_charged(rtt_server: LocalCosServer) -> None:
    for _ in range(3):
        _network(rtt_server)
    net = _network(rtt_server)
    assert net["connections"] == 0
    assert net["total_round_trips"] == 0


def test_expect_100_continue_is_one_more_round_trip(rtt_server: LocalCosServer) -> None:
    body = b"y" * 5000
    headers = _headers("PUT", "expect", len(body))
    headers["Expect"] = "100-continue"
    with socket.create_connection(("127.0.0.1", rtt_server.port), timeout=30) as s:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        s.sendall(f"PUT /expect HTTP/1.1\r\n{head}\r\n".encode())
        interim = s.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        s.sendall(body)
        final = s.recv(4096)
        assert final.startswith(b"HTTP/1.1 200"), final
    net = _network(rtt_server)
    assert net["round_trips"] == {"connect": 1, "continue": 1, "request": 1}


def test_a_connection_without_requests_is_counted_at_close(rtt_server: LocalCosServer) -> None:
    socket.create_connection(("127.0.0.1", rtt_server.port), timeout=30).close()
    net = _closed_connections_settle(rtt_server, 1)
    assert net["connections"] == 1
    assert net["round_trips"] == {"connect": 1}


# ------------------------------------------------------------------- over TLS


@pytest.mark.parametrize(
    ("version", "handshake_rtts"),
    [(ssl.TLSVersion.TLSv1_3, 1), (ssl.TLSVersion.TLSv1_2, 2)],
)
def test_tls_charges_each_handshake_round_trip(
    tls_server: LocalCosServer, tls_files: TlsFiles, version: ssl.TLSVersion, handshake_rtts: int
) -> None:
    assert tls_files.ca is not None
    ctx = _client_context(tls_files.ca, version)
    mine = {"connect": 0, "tls_handshake": 0, "request": 0}
    for c in range(2):
        conn = http.client.HTTPSConnection("127.0.0.1", tls_server.port, timeout=30, context=ctx)
        conn.connect()
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        # The client's own count: what it negotiated says how many round trips it took.
        assert sock.version() == version.name.replace("v1_", "v1.")
        mine["connect"] += 1
        mine["tls_handshake"] += 1 if sock.session_reused else handshake_rtts
        for i in range(2):
            assert _put(conn, f"t{c}-{i}", b"z" * 10) == 200
            mine["request"] += 1
        conn.close()
    net = _network(tls_server)
    assert net["round_trips"] == mine
    assert net["connections"] == net["tls_connections"] == 2
    assert net["plain_connections"] == 0
    assert net["charged_ms"] == pytest.approx(sum(mine.values()) * RTT_MS)


def test_a_resumed_tls12_session_is_one_handshake_round_trip(
    tls_server: LocalCosServer, tls_files: TlsFiles
) -> None:
    assert tls_files.ca is not None
    ctx = _client_context(tls_files.ca, ssl.TLSVersion.TLSv1_2)
    rtts = []
    session = None
    request = (
        "HEAD /k HTTP/1.1\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in _headers("HEAD", "k").items())
        + "Connection: close\r\n\r\n"
    ).encode()
    for n in range(2):
        raw = socket.create_connection(("127.0.0.1", tls_server.port), timeout=30)
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as s:
            rtts.append(1 if s.session_reused else 2)
            s.sendall(request)
            assert s.recv(4096).startswith(b"HTTP/1.1 404"), n
            session = s.session
    assert rtts == [2, 1], "the client did not resume its session"
    net = _network(tls_server)
    assert net["round_trips"]["tls_handshake"] == sum(rtts)


def test_plain_http_to_the_tls_server_fails_the_handshake(tls_server: LocalCosServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", tls_server.port, timeout=30)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        _put(conn, "plain", b"p")
    conn.close()
    deadline = time.monotonic() + 30
    while _network(tls_server)["tls_failures"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    net = _network(tls_server)
    assert net["tls_failures"] == 1
    assert net["connections"] == 0


def test_the_made_certificate_verifies_for_127_0_0_1_and_localhost(
    tls_server: LocalCosServer, tls_files: TlsFiles
) -> None:
    assert tls_files.ca is not None
    assert tls_server.url.startswith("https://127.0.0.1:")
    ctx = ssl.create_default_context(cafile=str(tls_files.ca))
    for host in ("127.0.0.1", "localhost"):
        conn = http.client.HTTPSConnection(host, tls_server.port, timeout=30, context=ctx)
        assert _put(conn, f"v-{host}", b"v") == 200
        conn.close()
    # Another CA's client refuses it: verification is real.
    other = http.client.HTTPSConnection(
        "127.0.0.1", tls_server.port, timeout=30, context=ssl.create_default_context()
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        other.connect()
    other.close()


def test_self_signed_files_are_made_once_and_the_key_is_private(tmp_path: Path) -> None:
    first = ensure_self_signed(tmp_path / "tls")
    again = ensure_self_signed(tmp_path / "tls")
    assert first == again
    assert first.ca is not None
    assert first.cert.read_bytes() == again.cert.read_bytes()
    assert first.key.stat().st_mode & 0o077 == 0


def test_cli_serves_https_with_a_made_ca_and_charges_rtt(tmp_path: Path, cli_servers: Any) -> None:
    tls_dir = tmp_path / "tls"
    srv = cli_servers(
        tmp_path / "root", "--tls-dir", str(tls_dir), "--rtt-ms", "2",
        "--secret-id", SECRET_ID, env={"COSENCFS_SERVER_SECRET_KEY": SECRET_KEY},
    )  # fmt: skip
    assert srv.line.startswith("listening on https://127.0.0.1:")
    ca = tls_dir / "ca.pem"
    ctx = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", srv.port, timeout=30, context=ctx)
    assert _put(conn, "cli", b"c") == 200
    conn.close()
    status, data = admin_request(
        srv.line.split()[-1], "GET", "/_cosencfs/stats", secret_id=SECRET_ID,
        secret_key=SECRET_KEY, cafile=str(ca),
    )  # fmt: skip
    assert status == 200
    assert data["network"]["tls_connections"] == 1
    assert data["network"]["round_trips"] == {"connect": 1, "tls_handshake": 1, "request": 1}
    assert data["network"]["charged_ms"] == pytest.approx(6.0)


def test_lifetime_connection_counts_survive_a_reset(rtt_server: LocalCosServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", rtt_server.port, timeout=30)
    assert _put(conn, "life", b"l") == 200
    conn.close()
    status, _ = admin_request(
        rtt_server.url, "POST", "/_cosencfs/reset-stats", secret_id=SECRET_ID,
        secret_key=SECRET_KEY,
    )  # fmt: skip
    assert status == 200
    net = _network(rtt_server)
    assert net["connections"] == 0
    assert net["lifetime"] == {
        "connections": 1, "plain_connections": 1, "tls_connections": 0, "tls_failures": 0,
    }  # fmt: skip


def test_object_bodies_over_tls_go_out_in_large_writes(
    tls_server: LocalCosServer, tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body read from its data file is sent in 1 MiB writes, whole and ranged, byte-exact.

    ``socket.sendfile`` on a TLS socket falls back to one 8 KiB ``send`` per
    TLS record: 512 sends for these 4 MiB, which made https rows of the
    benchmarks measure the server's Python loop.
    """
    assert tls_files.ca is not None
    body = bytes(range(256)) * (4 * 4096 + 3)  # 4 MiB + 768 B: a data file, not inline
    ctx = ssl.create_default_context(cafile=str(tls_files.ca))
    conn = http.client.HTTPSConnection("127.0.0.1", tls_server.port, timeout=30, context=ctx)
    assert _put(conn, "big", body) == 200
    sends: list[int] = []
    real_send = ssl.SSLSocket.send

    def counting_send(self: ssl.SSLSocket, data: Any, flags: int = 0) -> int:
        if self.server_side:
            sends.append(len(data))
        return real_send(self, data, flags)

    monkeypatch.setattr(ssl.SSLSocket, "send", counting_send)
    for rng, want in [(None, body), ("bytes=1048570-3145739", body[1048570:3145740])]:
        sends.clear()
        headers = _headers("GET", "big")
        if rng is not None:
            headers["Range"] = rng
        conn.request("GET", "/big", headers=headers)
        resp = conn.getresponse()
        assert resp.read() == want, rng
        assert len(sends) <= 2 + len(want) // (1024 * 1024), (rng, len(sends))
    conn.close()
