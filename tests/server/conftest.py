"""Fixtures for the local COS server tests: a real server on 127.0.0.1, real SDK clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from qcloud_cos import CosConfig, CosS3Client

from cosencfs.server import LocalCosServer
from tests.server._server_helpers import (
    BUCKET,
    REGION,
    SECRET_ID,
    SECRET_KEY,
    ClientFactory,
    CliServer,
    Http,
)


@pytest.fixture
def server_root(tmp_path: Path) -> Path:
    return tmp_path / "cos"


@pytest.fixture
def server(server_root: Path) -> Iterator[LocalCosServer]:
    """A server with signature checking on and one bucket."""
    with LocalCosServer(
        server_root, buckets=[BUCKET], secret_id=SECRET_ID, secret_key=SECRET_KEY
    ) as srv:
        yield srv


@pytest.fixture
def make_client(server: LocalCosServer) -> Iterator[ClientFactory]:
    """Builds SDK clients; each gets its own requests session, closed at teardown."""
    sessions: list[requests.Session] = []

    def make(
        secret_id: str | None = SECRET_ID,
        secret_key: str | None = SECRET_KEY,
        *,
        port: int | None = None,
        cls: type[Any] = CosS3Client,
        retry: int = 0,
        **kwargs: Any,
    ) -> Any:
        session = requests.Session()
        sessions.append(session)
        conf = CosConfig(
            IP="127.0.0.1",
            Port=port if port is not None else server.port,
            Region=REGION,
            Scheme="http",
            SecretId=secret_id,
            SecretKey=secret_key,
            Anonymous=secret_id is None,
            Timeout=30,
        )
        return cls(conf, retry=retry, session=session, **kwargs)

    yield make
    for session in sessions:
        session.close()


@pytest.fixture
def client(make_client: ClientFactory) -> Any:
    return make_client()


@pytest.fixture
def sdk_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of our own, so the SDK never writes key files into the real one."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def make_http() -> Iterator[Callable[[int], Http]]:
    opened: list[Http] = []

    def make(port: int) -> Http:
        conn = Http(port)
        opened.append(conn)
        return conn

    yield make
    for conn in opened:
        conn.close()


@pytest.fixture
def plain(server: LocalCosServer, make_http: Callable[[int], Http]) -> Http:
    return make_http(server.port)


@pytest.fixture
def cli_servers() -> Iterator[Callable[..., CliServer]]:
    started: list[CliServer] = []

    def start(
        root: Path, *extra: str, port: int = 0, env: dict[str, str] | None = None
    ) -> CliServer:
        srv = CliServer(root, *extra, port=port, env=env)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.kill()
