"""Fixtures of the store-layer tests: scripted and random server faults."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cosencfs.server import LocalCosServer
from cosencfs.store.cos import CosStore
from tests.store._store_helpers import FAULT_SEED, ScriptedFaults, quick_policy
from tests.testlib import make_store, start_server


@pytest.fixture
def scripted(server: LocalCosServer, monkeypatch: pytest.MonkeyPatch) -> ScriptedFaults:
    """Faults of the ``server`` fixture, decided request by request by the test."""
    faults = ScriptedFaults()
    # The request handler asks ``ctx.faults.pick(is_copy)`` once per request.
    monkeypatch.setattr(server._faults, "pick", faults.pick)
    return faults


@pytest.fixture
def faulty_server(tmp_path: Path) -> Iterator[LocalCosServer]:
    """A second server failing half of all requests (500, 503, reset; copies also 200+Error)."""
    srv = start_server(tmp_path / "faulty", fault_rate=0.5, fault_seed=FAULT_SEED)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def faulty_store(faulty_server: LocalCosServer) -> Iterator[CosStore]:
    s = make_store(faulty_server.url, retry=quick_policy())
    try:
        yield s
    finally:
        s.close()
