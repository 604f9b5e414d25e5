"""Fixtures of the keygen / rekey / fsck tests (on top of tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cosencfs.cli import bucket as cli_bucket
from cosencfs.cli import main
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.keyfiles import load_aes_key_file
from cosencfs.server import LocalCosServer
from tests.testlib import SECRET_ID, SECRET_KEY, new_key_file
from tests.tools._cmd_helpers import Sdk


@pytest.fixture
def new_key(tmp_path: Path) -> Path:
    """A second AES master key file (the one rotated to)."""
    return new_key_file(tmp_path / "new.key")


@pytest.fixture
def new_codec(new_key: Path) -> EnvelopeCodec:
    return EnvelopeCodec(load_aes_key_file(new_key))


@pytest.fixture
def sdk(server: LocalCosServer) -> Iterator[Sdk]:
    s = Sdk(server)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Callable[..., int]:
    """``cosencfs.cli.main`` in-process (in a sync test, or a thread of an async one),
    with the test credentials, leaving pytest's logging set-up alone."""
    monkeypatch.setattr(cli_bucket, "setup_logging", lambda *a, **k: None)
    monkeypatch.setenv("COS_SECRET_ID", SECRET_ID)
    monkeypatch.setenv("COS_SECRET_KEY", SECRET_KEY)
    return lambda *args: main(list(args))
