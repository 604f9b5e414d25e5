"""Listing against a reference model (hypothesis), directly on the storage layer."""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from cosencfs.server.listing import successor
from cosencfs.server.storage import Storage

# Characters around the edges the successor() logic must handle.
ALPHABET = ["a", "b", "/", "é", "\ud7ff", "\ue000", "\U0010ffff"]
keys_st = st.sets(st.text(st.sampled_from(ALPHABET), min_size=1, max_size=5), max_size=25)


def model(keys: set[str], prefix: str, delimiter: str, after: str) -> list[str]:
    """Every item (key or common prefix) of a listing after ``after``, in order."""
    items: list[str] = []
    for key in sorted(keys):
        if not key.startswith(prefix):
            continue
        item = key
        if delimiter:
            i = key.find(delimiter, len(prefix))
            if i >= 0:
                item = key[: i + len(delimiter)]
        if item > after and (not items or items[-1] != item):
            items.append(item)
    return items


def test_successor() -> None:
    assert successor("a/") == "a0"
    assert successor("") is None
    assert successor("\U0010ffff") is None
    assert successor("a\U0010ffff") == "b"
    assert successor("\ud7ff") == "\ue000"


def test_listing_matches_the_model(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "s")
    buckets = (f"b{i}" for i in itertools.count())

    @settings(max_examples=120, deadline=None)
    @given(
        keys=keys_st,
        prefix=st.text(st.sampled_from(ALPHABET), max_size=2),
        delimiter=st.sampled_from(["", "/", "a", "//", "\U0010ffff"]),
        max_keys=st.integers(1, 7),
        marker=st.text(st.sampled_from(ALPHABET), max_size=3),
    )
    def check(keys: set[str], prefix: str, delimiter: str, max_keys: int, marker: str) -> None:
        bucket = next(buckets)
        storage.create_bucket(bucket)
        for key in keys:
            storage.commit_object(
                bucket, key, b"", size=0, etag="e", content_type="t", meta={}, headers={}
            )
        # Paging through with NextMarker yields exactly the model's items, once each.
        seen: list[str] = []
        after: str | None = None
        for _ in range(len(keys) + 2):
            page = storage.list_objects(
                bucket, prefix=prefix, delimiter=delimiter, after=after, max_keys=max_keys
            )
            items = sorted([e.key for e in page.entries] + page.prefixes)
            assert len(items) <= max_keys
            seen += items
            if not page.truncated:
                break
            assert page.next_marker == items[-1]
            after = page.next_marker
        assert seen == model(keys, prefix, delimiter, "")
        # A page starting at an arbitrary marker.
        page = storage.list_objects(
            bucket, prefix=prefix, delimiter=delimiter, after=marker or None, max_keys=1000
        )
        expected = model(keys, prefix, delimiter, marker)
        assert sorted([e.key for e in page.entries] + page.prefixes) == expected
        for common in page.prefixes:
            assert delimiter
            assert common.endswith(delimiter)

    try:
        check()
    finally:
        storage.close()


def test_delimiter_listing_skips_large_directories(tmp_path: Path) -> None:
    """Listing the parent of a huge directory reads a few rows, not the whole directory."""
    storage = Storage(tmp_path / "s")
    try:
        storage.create_bucket("b")
        with storage.txn() as db:
            db.executemany(
                "INSERT INTO objects (bucket, key, size, etag, mtime_ms, content_type, meta, "
                "headers, data, body) VALUES ('b', ?, 0, 'e', 0, 't', '{}', '{}', '', x'')",
                [(f"huge/{i:06d}",) for i in range(50_000)] + [("top",), ("zz/1",)],
            )
        steps = 0

        def count_steps() -> int:
            nonlocal steps
            steps += 1
            return 0

        storage.db.set_progress_handler(count_steps, 100)
        page = storage.list_objects("b", prefix="", delimiter="/", after=None, max_keys=1000)
        storage.db.set_progress_handler(None, 100)
        assert page.prefixes == ["huge/", "zz/"]
        assert [e.key for e in page.entries] == ["top"]
        assert steps < 200, "the listing scanned the large directory"
    finally:
        storage.close()
