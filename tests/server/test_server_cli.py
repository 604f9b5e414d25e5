"""``cosencfs local-server`` as a subprocess."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from cosencfs.server.cli import SECRET_KEY_ENV
from tests.server._server_helpers import SECRET_ID, SECRET_KEY, CliServer, Http


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_and_stops_cleanly(
    tmp_path: Path,
    cli_servers: Callable[..., CliServer],
    make_http: Callable[[int], Http],
    sig: signal.Signals,
) -> None:
    srv = cli_servers(tmp_path / "root", "--secret-id", SECRET_ID, env={SECRET_KEY_ENV: SECRET_KEY})
    assert srv.line == f"listening on http://127.0.0.1:{srv.port}"
    conn = make_http(srv.port)
    assert conn.request("PUT", "k", body=b"via cli")[0] == 200
    status, _, body = conn.request("GET", "k")
    assert (status, body) == (200, b"via cli")
    assert conn.request("GET", "k", sign=False)[0] == 403  # keys given: checked
    conn.close()
    srv.proc.send_signal(sig)
    assert srv.proc.wait(timeout=30) == 0
    assert srv.proc.stdout is not None
    assert srv.proc.stdout.read() == ""  # exactly one line was printed
    assert (tmp_path / "root" / "index.sqlite").exists()


def test_cli_fault_options(
    tmp_path: Path, cli_servers: Callable[..., CliServer], make_http: Callable[[int], Http]
) -> None:
    srv = cli_servers(tmp_path / "root", "--fault-rate", "1", "--fault-seed", "3")
    conn = make_http(srv.port)
    failures = 0
    for _ in range(5):
        try:
            status, _, _ = conn.request("GET", "", sign=False)
        except ConnectionError:
            conn.close()
            conn.conn = Http(srv.port).conn
            failures += 1
        else:
            failures += status >= 500
    assert failures == 5


def test_cli_reports_a_busy_port(tmp_path: Path, cli_servers: Callable[..., CliServer]) -> None:
    first = cli_servers(tmp_path / "a")
    with pytest.raises(AssertionError, match="cannot start the local COS server"):
        cli_servers(tmp_path / "b", port=first.port)
