"""Fixtures of the transport tests: the local server over http and https, and a scripted one.

The local COS server answers with Content-Length and keeps connections
alive; the scripted server (``_raw.py``) sends what other servers and
proxies send too: chunked bodies, bodies ended by closing, connections
closed while idle, truncated bodies, no answer at all.  Both run over plain
TCP and over TLS with a private CA (``cosencfs.server.tls``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import trio

from cosencfs.server import LocalCosServer
from cosencfs.server.tls import TlsFiles, ensure_self_signed
from cosencfs.store.cos import CosSettings, CosStore
from cosencfs.store.retry import RetryPolicy
from tests.testlib import BUCKET, REGION, SECRET_ID, SECRET_KEY, start_server
from tests.transport._raw import Script, serve_script

StoreFactory = Callable[..., CosStore]


@pytest.fixture(params=["http", "https"])
def scheme(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """The local server's CA and certificate (made once: key generation is slow-ish)."""
    return ensure_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def ca_file(scheme: str, tls_files: TlsFiles) -> str | None:
    return str(tls_files.ca) if scheme == "https" else None


@pytest.fixture
def local(scheme: str, tls_files: TlsFiles, tmp_path: Path) -> Iterator[LocalCosServer]:
    """The local COS server over ``scheme``."""
    srv = start_server(tmp_path / "srv", tls=tls_files if scheme == "https" else None)
    try:
        yield srv
    finally:
        srv.stop()


def settings_for(url: str, **kw: object) -> CosSettings:
    base: dict[str, object] = {
        "bucket": BUCKET,
        "region": REGION,
        "endpoint": url,
        "secret_id": SECRET_ID,
        "secret_key": SECRET_KEY,
        "timeout": 5.0,
        "retry": RetryPolicy(max_attempts=3, deadline=10.0, base_delay=0.01),
    }
    base.update(kw)
    return CosSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
def make_store(ca_file: str | None) -> Iterator[StoreFactory]:
    """Stores made by the test (closed after it); ``ca_file`` trusts the local CA."""
    made: list[CosStore] = []

    def make(url: str, **kw: object) -> CosStore:
        kw.setdefault("ca_file", ca_file)
        store = CosStore(settings_for(url, **kw))
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
async def raw(scheme: str, tls_files: TlsFiles) -> AsyncIterator[Script]:
    """A scripted server over ``scheme``; ``script.url`` is its endpoint."""
    script = Script(tls=tls_files if scheme == "https" else None)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, lambda s: serve_script(script, s), 0)
        port = listeners[0].socket.getsockname()[1]
        script.url = f"{scheme}://127.0.0.1:{port}"
        yield script
        script.hold.set()
        nursery.cancel_scope.cancel()
