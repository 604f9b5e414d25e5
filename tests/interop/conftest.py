"""Fixtures of the SDK-over-HTTP interop tests: master-key setups, SDK clients, filesystems.

Three master-key setups, each seen from both sides:

``aes``
    SDK ``AESProvider(aes_key_path=...)``; cosencfs ``load_aes_key_file``.
``rsa-files``
    SDK ``RSAProvider(get_rsa_key_pair_path(...))`` (RSAES-OAEP, SHA-1);
    cosencfs ``load_rsa_key_files``.
``rsa-values``
    SDK ``RSAProvider(get_rsa_key_pair(pub_pem, priv_pem))`` (PKCS#1 v1.5);
    cosencfs ``load_rsa_key_files`` on the same pair (reads v1.5, writes OAEP).

The SDK is always given explicit key paths or values (it writes key files
into ``~`` when it misses one; ``tests/conftest.py`` points HOME elsewhere).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import trio

from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.fs.core import Filesystem
from cosencfs.server import LocalCosServer
from cosencfs.store.cos import CosStore
from tests.interop._interop_helpers import (
    KINDS,
    FsWith,
    SdkFactory,
    Setup,
    TrackingEncryptionClient,
    make_setup,
)
from tests.testlib import FsFactory, sdk_config


@pytest.fixture(scope="session")
def setups(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Setup]:
    return {kind: make_setup(kind, tmp_path_factory.mktemp(f"keys-{kind}")) for kind in KINDS}


@pytest.fixture(params=KINDS)
def setup(request: pytest.FixtureRequest, setups: dict[str, Setup]) -> Setup:
    return setups[request.param]


@pytest.fixture
def make_sdk(server: LocalCosServer) -> Iterator[SdkFactory]:
    """``make_sdk(provider)``: a CosEncryptionClient on the local server (IP mode)."""
    clients: list[TrackingEncryptionClient] = []

    def make(provider: Any) -> TrackingEncryptionClient:
        conf = sdk_config(server.port)
        client = TrackingEncryptionClient(conf, provider, requests.Session())
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def sdk(setup: Setup, make_sdk: SdkFactory) -> TrackingEncryptionClient:
    return make_sdk(setup.make_provider())


@pytest.fixture
async def fs_with(store: CosStore, tmp_path: Path) -> AsyncIterator[FsWith]:
    """``await fs_with(codec, **options)``: a started filesystem (as ``make_fs``
    builds them) on the ``store`` fixture, with the given master key."""
    factories: list[FsFactory] = []
    async with trio.open_nursery() as nursery:

        async def make(codec: EnvelopeCodec, **kw: Any) -> Filesystem:
            factory = FsFactory(store, codec, tmp_path / f"fs{len(factories)}", nursery)
            factories.append(factory)
            return await factory(**kw)

        try:
            yield make
        finally:
            nursery.cancel_scope.cancel()
    for factory in factories:
        for c in factory.caches:
            c.close()
