"""The journal (cosencfs/cache/journal.py): schema migration, dirty records,
the batched attribute cache, malformed rows."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from cosencfs.cache.journal import (
    FORMAT_LAYERS,
    FORMAT_LEGACY,
    SCHEMA_VERSION,
    DirtyRecord,
    Journal,
    LayerRecord,
    SourceRecord,
)
from cosencfs.cache.layout import new_vid
from cosencfs.errors import ConfigError

#: The dirty table as format-1 releases made it (no format/layers/object_envelope).
_V1_SCHEMA = """
CREATE TABLE dirty (
    fid TEXT PRIMARY KEY, key TEXT NOT NULL, vid TEXT NOT NULL, size INTEGER NOT NULL,
    present TEXT NOT NULL, envelope TEXT NOT NULL, attrs TEXT NOT NULL,
    content_type TEXT NOT NULL DEFAULT '', source TEXT, upload_id TEXT, parts TEXT,
    updated REAL NOT NULL
);
CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO settings VALUES ('schema', '1');
"""


def layered(fid: str, key: str = "dir/file", *, vid: str | None = None) -> DirtyRecord:
    vid = vid or new_vid()
    return DirtyRecord(
        fid=fid,
        key=key,
        vid=vid,
        size=123,
        attrs={"mode": "33188"},
        content_type="application/octet-stream",
        source=SourceRecord(key, "etag1", {"client-side-encryption-key": "k"}, 100),
        layers=[
            LayerRecord(vid, 4096, "wrapped", 123, 100, sealed=True, envelope={"e": "1"}),
            LayerRecord(
                new_vid(),
                10,
                "wrapped2",
                100,
                100,
                direct_vid=new_vid(),
                direct_end=7,
                direct_envelope={"a": "b"},
                burned=True,
            ),
        ],
        object_envelope={"client-side-encryption-iv": "iv"},
    )


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.db")
    yield j
    j.close()


def test_format_1_rows_survive_the_migration(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    db = sqlite3.connect(path)
    db.executescript(_V1_SCHEMA)
    vid = new_vid()
    src = {"key": "a.bin", "etag": "e", "envelope": {"k": "v"}, "limit": 300}
    db.execute(
        "INSERT INTO dirty VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        ("fid1", "a.bin", vid, 300, "[[100, 150]]", json.dumps({"x": "y"}),
         json.dumps({"mode": "33188"}), "application/octet-stream", json.dumps(src),
         None, "{}", 1.0),
    )  # fmt: skip
    db.commit()
    db.close()
    j = Journal(path)
    try:
        assert j.get_setting("schema") == str(SCHEMA_VERSION)
        (rec,) = j.dirty_records()
        assert rec.format == FORMAT_LEGACY
        assert (rec.fid, rec.key, rec.vid, rec.size) == ("fid1", "a.bin", vid, 300)
        assert rec.present == [[100, 150]]
        assert rec.envelope == {"x": "y"}
        assert rec.source == SourceRecord("a.bin", "e", {"k": "v"}, 300)
        assert rec.layers == []
        assert rec.object_envelope is None
        # The migrated table takes records of this release.
        j.put_dirty(layered("fid2"))
        assert {r.fid for r in j.dirty_records()} == {"fid1", "fid2"}
    finally:
        j.close()
    # Opening a migrated journal again changes nothing.
    j = Journal(path)
    try:
        assert j.dirty_count() == 2
    finally:
        j.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.db")
    j.set_setting("schema", str(SCHEMA_VERSION + 1))
    j.close()
    with pytest.raises(ConfigError, match="newer cosencfs"):
        Journal(tmp_path / "journal.db")


def test_dirty_records_put_get_delete(journal: Journal) -> None:
    rec = layered("f1")
    journal.put_dirty(rec)
    got = journal.get_dirty("f1")
    assert got == rec
    assert got.format == FORMAT_LAYERS
    assert journal.get_dirty("nope") is None
    # A multipart upload of the same sealed layer survives a rewrite of the record.
    journal.set_upload("f1", "upload-1", {1: "etag-a", 2: "etag-b"})
    journal.put_dirty(layered("f1", vid=rec.vid))
    got = journal.get_dirty("f1")
    assert got is not None
    assert got.upload_id == "upload-1"
    assert got.parts == {1: "etag-a", 2: "etag-b"}
    # A new layer starts afresh.
    journal.put_dirty(layered("f1"))
    got = journal.get_dirty("f1")
    assert got is not None
    assert got.upload_id is None
    assert got.parts == {}
    journal.set_dirty_key("f1", "renamed")
    assert journal.get_dirty("f1").key == "renamed"  # type: ignore[union-attr]
    journal.put_dirty(layered("f2"))
    assert journal.dirty_count() == 2
    journal.delete_dirty("f1")
    assert [r.fid for r in journal.dirty_records()] == ["f2"]


def test_layers_journaled_before_their_upload_envelope_still_read(journal: Journal) -> None:
    """Rows of releases before the per-layer envelope: the field is absent, read as None."""
    rec = layered("f1")
    assert rec.layers[0].envelope == {"e": "1"}
    journal.put_dirty(rec)
    layers = json.loads(journal._db.execute("SELECT layers FROM dirty").fetchone()[0])
    assert layers[0]["envelope"] == {"e": "1"}
    assert "envelope" not in layers[1]  # a layer never sealed for upload
    for x in layers:
        x.pop("envelope", None)
    journal._db.execute("UPDATE dirty SET layers=?", (json.dumps(layers),))
    got = journal.get_dirty("f1")
    assert got is not None
    assert [x.envelope for x in got.layers] == [None, None]
    assert got.object_envelope == rec.object_envelope  # what recovery falls back on


def test_malformed_and_foreign_rows_are_skipped_and_kept(
    journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    journal.put_dirty(layered("good"))
    journal.put_dirty(layered("bad-json"))
    journal.put_dirty(layered("bad-path"))
    db = journal._db
    db.execute("UPDATE dirty SET layers='{not json' WHERE fid='bad-json'")
    db.execute("UPDATE dirty SET vid='../../etc/passwd' WHERE fid='bad-path'")
    with caplog.at_level(logging.ERROR, logger="cosencfs.cache"):
        assert [r.fid for r in journal.dirty_records()] == ["good"]
        assert journal.get_dirty("bad-json") is None
    assert any("malformed" in r.getMessage() for r in caplog.records)
    # Kept untouched as evidence.
    assert journal.dirty_count() == 3


def test_attribute_cache_is_batched(journal: Journal, tmp_path: Path) -> None:
    journal.flush_attrs()
    journal.put_attrs("a", "e1", 10, None, {"mode": "1"})
    # Readable at once, but not yet written: another connection sees nothing.
    assert journal.get_attrs("a") is not None
    other = sqlite3.connect(tmp_path / "journal.db")
    try:
        assert other.execute("SELECT COUNT(*) FROM attrs").fetchone()[0] == 0
        journal.set_attrs_lm("a", 1234.0)
        rec = journal.get_attrs("a")
        assert rec is not None
        assert rec.lm == 1234.0
        assert rec.matches("e1", 10, 1234.5)
        assert not rec.matches("e1", 10, 1236.0)
        journal.flush_attrs()
        assert other.execute("SELECT etag, lm FROM attrs").fetchall() == [("e1", 1234.0)]
        # A thousand pending records are written in one go, without a flush.
        for i in range(1000):
            journal.put_attrs(f"k{i}", "e", i, None, {})
        assert other.execute("SELECT COUNT(*) FROM attrs").fetchone()[0] == 1001
        # Deletes are batched as well.
        journal.delete_attrs("a")
        assert journal.get_attrs("a") is None
        journal.flush_attrs()
        assert other.execute("SELECT COUNT(*) FROM attrs WHERE key='a'").fetchone()[0] == 0
        journal.delete_attrs_prefix("k1")
        assert journal.get_attrs("k1") is None
        assert journal.get_attrs("k2") is not None
        assert journal.get_attrs("k10") is None
        assert journal.get_attrs("k999") is not None
    finally:
        other.close()


def test_forget_attrs_now_deletes_in_its_own_transaction(journal: Journal, tmp_path: Path) -> None:
    journal.put_attrs("dir/", "e", 0, 1.0, {"mode": "16877"})
    journal.flush_attrs()
    journal.put_attrs("dir/", "e", 0, 1.0, {"mode": "16832"})  # pending
    journal.forget_attrs_now("dir/")
    assert journal.get_attrs("dir/") is None
    other = sqlite3.connect(tmp_path / "journal.db")
    try:
        # Gone on disk already: a crash now cannot bring the old attributes back.
        assert other.execute("SELECT COUNT(*) FROM attrs").fetchone()[0] == 0
    finally:
        other.close()


def test_pending_deletes(journal: Journal) -> None:
    journal.add_delete("x")
    journal.add_delete("y")
    assert journal.pending_deletes() == ["x", "y"]
    journal.remove_deletes(["x"])
    assert journal.pending_deletes() == ["y"]


def test_seal_dirty_flips_only_the_newest_layers_flag(journal: Journal) -> None:
    rec = layered("f1")
    rec.layers[0].sealed = False
    journal.put_dirty(rec)
    journal.set_upload("f1", "upload-1", {1: "etag-a"})
    assert not journal.seal_dirty("f1", new_vid())  # another layer: nothing changes
    assert not journal.seal_dirty("nope", rec.vid)
    got = journal.get_dirty("f1")
    assert got is not None
    assert not got.layers[0].sealed
    assert journal.seal_dirty("f1", rec.vid)
    got = journal.get_dirty("f1")
    assert got is not None
    rec.layers[0].sealed = True
    rec.upload_id, rec.parts = "upload-1", {1: "etag-a"}
    assert got == rec  # all else as it was, the lower layer included


def test_seal_dirty_leaves_format_1_rows_alone(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with sqlite3.connect(path) as db:
        db.executescript(_V1_SCHEMA)
        db.execute(
            "INSERT INTO dirty VALUES ('f1', 'k', ?, 5, '[[0,5]]', '{}', '{}', '', NULL,"
            " NULL, NULL, 1.0)",
            (new_vid(),),
        )
    j = Journal(path)
    try:
        (row,) = j._db.execute("SELECT vid, layers FROM dirty").fetchall()
        assert not j.seal_dirty("f1", row[0])
        assert j._db.execute("SELECT layers FROM dirty").fetchone() == (row[1],)
    finally:
        j.close()


def _on_disk(path: Path) -> set[str]:
    """The fids of the dirty records another connection sees (what a crash leaves)."""
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT fid FROM dirty")}


def test_record_deletes_go_with_the_next_write_in_order(journal: Journal) -> None:
    path = journal.path
    journal.put_dirty(layered("f1"))
    journal.put_dirty(layered("f2"))
    journal.delete_dirty("f1")
    assert _on_disk(path) == {"f1", "f2"}  # deferred: no transaction of its own
    journal.delete_dirty("f2")
    journal.put_dirty(layered("f2"))  # written again after its delete: it stays
    assert _on_disk(path) == {"f2"}
    journal.delete_dirty("f2")
    journal.add_delete("some/key")  # any write carries the deletes before it
    assert _on_disk(path) == set()
    journal.put_dirty(layered("f3"))
    journal.delete_dirty("f3")
    # Reads of the dirty table see them (they are written first).
    assert journal.dirty_count() == 0
    assert _on_disk(path) == set()
    journal.put_dirty(layered("f4"))
    journal.delete_dirty("f4")
    assert journal.get_dirty("f4") is None
    journal.put_dirty(layered("f5"))
    journal.delete_dirty("f5")
    journal.put_attrs("k", "e", 1, None, {})
    journal.flush_attrs()
    assert _on_disk(path) == set()


def test_deferred_deletes_are_written_at_close(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.db")
    j.put_dirty(layered("f1"))
    j.delete_dirty("f1")
    j.close()
    assert _on_disk(tmp_path / "journal.db") == set()
