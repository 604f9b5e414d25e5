"""Format-1 cache files (cosencfs/cache/legacy.py): only the recorded ranges are read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cosencfs.cache import legacy
from cosencfs.crypto.ctr import DataKey, encrypt
from cosencfs.errors import CosEncFsError


def test_recorded_ranges_below_the_size_are_read_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(legacy, "CHUNK", 100)
    dk = DataKey.generate()
    plain = os.urandom(1000)
    path = tmp_path / "old"
    path.write_bytes(encrypt(dk, 0, plain))
    got: list[tuple[int, bytes]] = []
    legacy.read_legacy(path, dk, [[0, 150], [700, 1000]], 900, lambda p, b: got.append((p, b)))
    assert [(p, len(b)) for p, b in got] == [(0, 100), (100, 50), (700, 100), (800, 100)]
    assert all(b == plain[p : p + len(b)] for p, b in got)


def test_a_short_file_is_refused(tmp_path: Path) -> None:
    dk = DataKey.generate()
    path = tmp_path / "old"
    path.write_bytes(encrypt(dk, 0, b"x" * 10))
    with pytest.raises(CosEncFsError, match="short"):
        legacy.read_legacy(path, dk, [[0, 20]], 20, lambda p, b: None)
