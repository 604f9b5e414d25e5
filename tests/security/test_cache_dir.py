"""A crafted or foreign cache directory (item 6 of issue 12)."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest
import trio

from cosencfs.cache.layout import VID_SUFFIXES, valid_vid
from cosencfs.cache.manager import CacheManager
from cosencfs.config import MountSettings
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.errors import CacheDirError, NotFoundError
from cosencfs.fs.core import Filesystem
from cosencfs.store.cos import CosStore
from tests.security._sec_helpers import NOBODY, fs_read, fs_write
from tests.testlib import BUCKET, MountFactory, fs_options

ENVELOPE_FIELDS = ("client-side-encryption-key", "client-side-encryption-iv")


def craft_dirty(journal: Path, *, key: str, vid: str, size: int, envelope: dict[str, str]) -> None:
    """A dirty record, as an attacker with write access to the cache would add it."""
    with sqlite3.connect(journal) as db:
        db.execute(
            "INSERT INTO dirty (fid, key, vid, size, present, envelope, attrs, content_type,"
            " source, upload_id, parts, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                "f" * 32,
                key,
                vid,
                size,
                json.dumps([[0, size]]),
                json.dumps(envelope),
                json.dumps({}),
                "",
                None,
                None,
                "{}",
                time.time(),
            ),
        )


async def real_envelope(store: CosStore, key: str) -> dict[str, str]:
    info = await store.head(key)
    return {k: v for k, v in info.metadata.items() if k.startswith("client-side-encryption")}


def cache_root_of(url: str, cache_dir: Path) -> Path:
    settings = MountSettings(
        bucket=BUCKET, mountpoint="/unused", endpoint=url, cache_dir=str(cache_dir)
    )
    return settings.cache_root()


# ---------------------------------------------------------------- the journal


def test_only_well_formed_vids_are_accepted() -> None:
    good = "0123456789abcdef" * 2
    assert valid_vid(good)
    for suffix in VID_SUFFIXES:
        assert valid_vid(good + suffix)
    for bad in (
        "../../etc/shadow",
        "/etc/shadow",
        good.upper(),
        good[:-1],
        good + "0",
        good + "/../x",
        good + ".tmp",
        f"{good}.log.log",
        "",
        None,
        42,
    ):
        assert not valid_vid(bad), bad


@pytest.mark.mount
@pytest.mark.parametrize("vid", ["REL", "ABS"], ids=["relative", "absolute"])
def test_crafted_journal_record_does_not_upload_another_file(
    mounts: MountFactory, store: CosStore, tmp_path: Path, vid: str
) -> None:
    """The review's attack: a dirty record naming any readable file, replayed."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"VICTIM: root's private notes\n")
    victim.chmod(0o644)
    m = mounts()
    (m.mountpoint / "real.txt").write_bytes(b"an ordinary file\n")
    assert m.umount() == 0
    envelope = trio.run(real_envelope, store, "real.txt")
    assert len(envelope) == 2
    root = cache_root_of(m.url, m.cache_dir)
    target = str(victim) if vid == "ABS" else os.path.relpath(victim, root / "data")
    assert (root / "data" / target).resolve() == victim.resolve()
    craft_dirty(
        root / "journal.db",
        key="stolen.txt",
        vid=target,
        size=victim.stat().st_size,
        envelope=envelope,
    )
    m.start()
    try:
        assert (m.mountpoint / "real.txt").read_bytes() == b"an ordinary file\n"
        assert not (m.mountpoint / "stolen.txt").exists()
    finally:
        assert m.umount() == 0
    with pytest.raises(NotFoundError):
        trio.run(store.head, "stolen.txt")
    assert victim.read_bytes() == b"VICTIM: root's private notes\n"  # not unlinked either
    assert "not a name cosencfs makes" in m.log()
    # The record is left as it is (evidence), and ignored again next time.
    with sqlite3.connect(root / "journal.db") as db:
        assert db.execute("SELECT vid FROM dirty").fetchall() == [(target,)]


# ---------------------------------------------------------------- owner, links, modes


@pytest.fixture
def cache_base(tmp_path: Path) -> Path:
    base = tmp_path / "caches"
    base.mkdir(mode=0o700)
    return base


def open_cache(root: Path, store: CosStore) -> CacheManager:
    return CacheManager(root, store, limit_bytes=1 << 30)


def test_cache_dir_of_another_user_is_refused(cache_base: Path, store: CosStore) -> None:
    root = cache_base / "mine"
    root.mkdir(mode=0o700)
    (root / "data").mkdir(mode=0o700)
    os.chown(root, NOBODY, NOBODY)  # pre-created by another user
    with pytest.raises(CacheDirError) as err:
        open_cache(root, store)
    assert str(root) in str(err.value)
    assert f"uid {NOBODY}" in str(err.value)
    # An entry of someone else inside our own cache: refused as well.
    os.chown(root, 0, 0)
    os.chown(root / "data", NOBODY, NOBODY)
    with pytest.raises(CacheDirError, match="data"):
        open_cache(root, store)


@pytest.mark.mount
def test_mount_refuses_a_foreign_cache_dir(mounts: MountFactory, tmp_path: Path) -> None:
    m = mounts(start=False)
    root = cache_root_of(m.url, m.cache_dir)
    root.mkdir(parents=True)
    os.chown(root, NOBODY, NOBODY)
    with pytest.raises(RuntimeError, match="mount exited"):
        m.start()
    assert str(root) in m.log()
    assert f"belongs to uid {NOBODY}" in m.log()


@pytest.mark.parametrize("where", ["root", "data", "journal.db", "lock", "data/file"])
def test_symlinks_in_the_cache_are_refused(
    cache_base: Path, store: CosStore, tmp_path: Path, where: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bait = tmp_path / "bait.txt"
    bait.write_bytes(b"untouched")
    root = cache_base / "c"
    if where == "root":
        root.symlink_to(elsewhere)
        link = root
    else:
        open_cache(root, store).close()
        link = root / where
        if link.is_dir():
            link.rmdir()
        elif link.exists():
            link.unlink()
        link.symlink_to(elsewhere if where == "data" else bait)
    with pytest.raises(CacheDirError) as err:
        open_cache(root, store)
    assert str(link) in str(err.value)
    assert "symbolic link" in str(err.value)
    assert bait.read_bytes() == b"untouched"
    assert not any(elsewhere.iterdir())


def test_directories_above_writable_by_others_are_refused(tmp_path: Path, store: CosStore) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(CacheDirError, match="chmod go-w"):
        open_cache(shared / "cosencfs" / "c", store)
    shared.chmod(0o1777)  # sticky, like /tmp: others cannot replace our entries
    open_cache(shared / "cosencfs" / "c", store).close()
    group = tmp_path / "group"
    group.mkdir()
    group.chmod(0o770)
    os.chown(group, 0, NOBODY)  # writable by the members of another group
    with pytest.raises(CacheDirError, match="chmod go-w"):
        open_cache(group / "c", store)
    os.chown(group, 0, os.getegid())  # the user's own group, nobody else in it
    open_cache(group / "c", store).close()


def test_new_cache_is_private(cache_base: Path, store: CosStore) -> None:
    root = cache_base / "new"
    cache = open_cache(root, store)
    try:
        cache.journal.put_attrs("k", "etag", 1, None, {})
        cache.journal.flush_attrs()
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        assert stat.S_IMODE((root / "data").stat().st_mode) == 0o700
        for name in ("journal.db", "journal.db-wal", "journal.db-shm", "lock"):
            if (root / name).exists():
                assert stat.S_IMODE((root / name).stat().st_mode) == 0o600, name
    finally:
        cache.close()


async def test_looser_cache_of_the_user_is_tightened_not_refused(
    cache_base: Path, store: CosStore, codec: EnvelopeCodec, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache left by an earlier release (journal.db 0644 ...) with dirty data in it."""
    root = cache_base / "old"
    opts = fs_options(max_dirty_age=3600.0)
    cache = open_cache(root, store)
    fs = Filesystem(store, codec, cache, opts)  # not started: nothing is uploaded
    await fs_write(fs, "dirty.txt", b"closed, never uploaded", sync=False)
    cache.close()
    with pytest.raises(NotFoundError):
        await store.head("dirty.txt")
    for path in (root, root / "data"):
        path.chmod(0o755)
    for path in [root / "journal.db", *(root / "data").iterdir()]:
        path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="cosencfs.cache.layout"):
        cache = open_cache(root, store)
    try:
        warnings = [r for r in caplog.records if "made it private" in r.getMessage()]
        assert len(warnings) == 1
        assert str(root) in warnings[0].getMessage()
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        assert stat.S_IMODE((root / "journal.db").stat().st_mode) == 0o600
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (root / "data").iterdir())
        fs = Filesystem(store, codec, cache, opts)
        report = await fs.recover()
        assert report.uploaded == ["dirty.txt"]
        assert not report.failed
        ino = (await fs.lookup(1, b"dirty.txt")).ino
        assert await fs_read(fs, ino) == b"closed, never uploaded"
    finally:
        cache.close()


def test_crafted_layer_records_are_ignored(tmp_path: Path) -> None:
    """Format-2 records: every layer id is checked, and a malformed row is skipped."""
    from cosencfs.cache.journal import DirtyRecord, Journal, LayerRecord

    journal = Journal(tmp_path / "journal.db")
    try:
        good = "a" * 32
        for fid, layer_vid in (("ok", good), ("bad", "../../etc/passwd")):
            journal.put_dirty(
                DirtyRecord(
                    fid=fid,
                    key=f"{fid}.txt",
                    vid=good,
                    size=1,
                    attrs={},
                    layers=[LayerRecord(layer_vid, 0, "kid:AAAA", 1, 0)],
                )
            )
        journal._db.execute(
            "UPDATE dirty SET layers='[{\"vid\": 1}' WHERE fid='ok'"  # truncated JSON
        )
        journal.put_dirty(
            DirtyRecord(fid="fine", key="fine.txt", vid=good, size=0, attrs={},
                        layers=[LayerRecord(good, 0, "kid:AAAA", 0, 0)])
        )  # fmt: skip
        assert [r.fid for r in journal.dirty_records()] == ["fine"]
        assert journal.dirty_count() == 3  # the others stay, as evidence
    finally:
        journal.close()
