"""Fixtures of the keystream tests: this test's part of the session's keystream ledger."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.keystream._helpers import LedgerSlice


@pytest.fixture(autouse=True)
def ledger_slice(tmp_path: Path) -> Iterator[LedgerSlice]:
    """The ledger records this test adds; checked at teardown if the test did not.

    The session check (tests/conftest.py) sees the same violations; this one
    names the test that made them.
    """
    part = LedgerSlice(tmp_path)
    yield part
    if not part.checked:
        bad = part.violations()
        assert not bad, "keystream reused during this test:\n" + "\n".join(bad)
