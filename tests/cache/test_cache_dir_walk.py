"""The cache directory's start-up walk and files deleted while it runs.

A mount's evicted cache files are unlinked in batches by a worker thread
(cosencfs/cache/spare.py); a later mount in the same process (the test
suite's remounts) walked the directory while such a batch still ran, and a
file gone between the listing and its ``stat`` failed the mount with
FileNotFoundError (seen once in a full run of tests/fs/test_recovery_window.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cosencfs.cache.layout import prepare_cache_dir


def test_a_file_deleted_during_the_walk_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    prepare_cache_dir(root)
    victim = root / "data" / "gone"
    victim.write_bytes(b"x")
    kept = root / "data" / "kept"
    kept.write_bytes(b"y")
    kept.chmod(0o644)
    real = os.scandir

    class Vanishing:
        """scandir, whose entry ``gone`` is unlinked after it was listed."""

        def __init__(self, d: str | os.PathLike[str]) -> None:
            self.it = real(d)

        def __enter__(self) -> Vanishing:
            return self

        def __exit__(self, *exc: object) -> None:
            self.it.close()

        def __iter__(self):  # type: ignore[no-untyped-def]
            for entry in self.it:
                if entry.name == "gone":
                    os.unlink(entry.path)
                yield entry

    monkeypatch.setattr(os, "scandir", Vanishing)
    prepare_cache_dir(root)  # (raised FileNotFoundError before)
    assert not victim.exists()
    assert kept.stat().st_mode & 0o077 == 0  # the walk went on past it
