"""Fixtures of the cache tests: a cache manager whose store is never called."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from cosencfs.cache.manager import CacheManager
from cosencfs.store.base import ObjectStore

#: Nothing here fetches: the store is never called.
NO_STORE = cast(ObjectStore, object())


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[CacheManager]:
    cm = CacheManager(tmp_path / "cache", NO_STORE, limit_bytes=1 << 30)
    yield cm
    cm.close()
