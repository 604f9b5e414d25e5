"""Fixtures for the crypto tests.

The COS SDK writes key files under ``~`` whenever it cannot find one, so
every test here runs with HOME pointing at a throw-away directory, and the
SDK is always given explicit key paths or values.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crypto._crypto_helpers import RsaPair, deterministic_rsa


@pytest.fixture(autouse=True, scope="session")
def _throwaway_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # Session scope so hypothesis tests (which refuse function-scoped
    # fixtures) are covered too; tests that need a pristine HOME use
    # ``fresh_home``.
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        yield home


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture(scope="session")
def rsa_a() -> RsaPair:
    return deterministic_rsa(1)


@pytest.fixture(scope="session")
def rsa_b() -> RsaPair:
    return deterministic_rsa(2)
